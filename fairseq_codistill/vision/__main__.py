"""``python -m fairseq_codistill.vision`` (also under torchrun)."""
from fairseq_codistill.vision.train import main

main()
