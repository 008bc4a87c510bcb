"""fairseq-codistill: codistillation for fairseq (and plain PyTorch vision models).

Dependencies are deliberately loose and exclude torch and fairseq: a cluster user
brings their own CUDA torch and fairseq, and `make install` pins the CPU ones here.
"""
from setuptools import find_packages, setup

setup(
    name="fairseq-codistill",
    version="0.1.0",
    description="Codistillation for fairseq: n models sharing a function through weight snapshots",
    packages=find_packages(include=["fairseq_codistill", "fairseq_codistill.*"]),
    python_requires=">=3.9",
    install_requires=["numpy"],
    # --codistill-dir URLs: fsspec's filesystem for each store, imported only when a URL
    # names it (s3://, gs://, az://).
    extras_require={"report": ["matplotlib"], "data": ["sentencepiece", "sacrebleu"],
                    "s3": ["s3fs"], "gcs": ["gcsfs"], "azure": ["adlfs"],
                    # CodistillSeq2SeqTrainer; accelerate because the Trainer needs it
                    "hf": ["transformers>=5.0", "accelerate>=1.0"]},
    entry_points={
        "console_scripts": [
            "fairseq-codistill-launch = fairseq_codistill.tools.launch:main",
            "fairseq-codistill-report = fairseq_codistill.tools.report:main",
            "fairseq-codistill-average = fairseq_codistill.tools.average:main",
            "fairseq-codistill-teacher = fairseq_codistill.tools.teacher:main",
            "fairseq-codistill-vision = fairseq_codistill.vision.train:main",
        ],
    },
)
