"""recipes/: lint, the batch and flag arithmetic of the all-reduce and codistill recipes
(DRY_RUN=1), and the TINY=1 IWSLT'14 chain end to end on the CPU: prepare -> codistill
(2 models) and all-reduce -> eval.sh -> sacrebleu BLEU and validation NLL."""
import json
import math
import shlex
import subprocess

import pytest

from conftest import BIN, REPO, json_logs, run
from fixtures.nmt_archives import prep_env, prepare_iwslt14

RECIPES = REPO / "recipes"
SCRIPTS = sorted(RECIPES.glob("iwslt14_*.sh")) + sorted(RECIPES.glob("wmt16_*.sh")) + [
    RECIPES / "eval.sh", REPO / "data-prep" / "common.sh",
    REPO / "data-prep" / "prepare-iwslt14.sh", REPO / "data-prep" / "prepare-wmt16-en-de.sh"]
# fairseq-train flags a run sets once per job, not per model: compared separately below.
JOB_FLAGS = {"--distributed-world-size", "--update-freq", "--save-dir", "--criterion",
             "--label-smoothing", "--task", "--codistill-alpha", "--codistill-alpha-schedule",
             "--codistill-gamma", "--codistill-interval", "--codistill-max-lead",
             "--codistill-wait-for-peers"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    run(["bash", "-n", script])


def test_shellcheck_clean():
    proc = subprocess.run([str(BIN / "shellcheck"), "-x", *map(str, SCRIPTS)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout


def dry_run(recipe, tmp_path, **knobs):
    """The command a recipe would run, as a list of words."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    proc = run(["bash", RECIPES / recipe, "--max-epoch", "50"],
               env=prep_env(DATA=tmp_path / "bin", SAVE_DIR=tmp_path / "run", DRY_RUN=1, **knobs))
    return shlex.split(proc.stdout)


def flags(words):
    """{--flag: value or True} of a command's words."""
    out, key = {}, None
    for word in words:
        if word.startswith("--"):
            key = word
            out[key] = True
        elif key is not None and out[key] is True:
            out[key] = word
    return out


@pytest.mark.parametrize("dataset, ngpu, batch, freq", [
    ("wmt16_en_de", 16, 128, 8),  # Ott et al.: 16 GPUs x update-freq 8 = their 128 GPUs
    ("wmt16_en_de", 8, 128, 16),
    ("iwslt14", 4, 4, 1),
])
def test_codistill_splits_the_allreduce_batch(tmp_path, dataset, ngpu, batch, freq):
    allreduce = dry_run(f"{dataset}_big_allreduce.sh", tmp_path, NGPU=ngpu)
    codistill = dry_run(f"{dataset}_big_codistill.sh", tmp_path, NGPU=ngpu)
    assert allreduce[0] == "fairseq-train" and codistill[0] == "fairseq-codistill-launch"
    split = codistill.index("--")
    launch, train = flags(codistill[:split]), flags(codistill[split + 1:])
    base = flags(allreduce)

    # one job on all NGPU GPUs against two jobs on NGPU/2 each, the same total batch
    assert int(base["--distributed-world-size"]) == ngpu
    assert launch["--num-models"] == "2" and int(launch["--gpus-per-model"]) == ngpu // 2
    base_batch = ngpu * int(base["--update-freq"]) * int(base["--max-tokens"])
    codistill_batch = 2 * (ngpu // 2) * int(train["--update-freq"]) * int(train["--max-tokens"])
    assert int(base["--update-freq"]) == freq and base_batch == codistill_batch == batch * 3584

    # the same per-model recipe, the same number of updates, both forwarding "$@"
    assert {k: v for k, v in base.items() if k not in JOB_FLAGS} == \
           {k: v for k, v in train.items() if k not in JOB_FLAGS}
    assert base["--arch"] == "transformer_vaswani_wmt_en_de_big" and base["--fp16"] is True
    assert base["--max-epoch"] == train["--max-epoch"] == "50"
    # label smoothing only in the baseline; the paper's schedule only in codistillation
    assert (base["--criterion"], base["--label-smoothing"]) == ("label_smoothed_cross_entropy", "0.1")
    assert train["--criterion"] == "codistill_ce" and "--label-smoothing" not in train
    assert (train["--codistill-alpha-schedule"], train["--codistill-gamma"]) == ("exponential", "1.1")
    assert train["--user-dir"] == str(REPO / "fairseq_codistill")
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_gpus_that_do_not_split_are_refused(tmp_path):
    (tmp_path / "bin").mkdir()
    env = prep_env(DATA=tmp_path / "bin", SAVE_DIR=tmp_path / "run", DRY_RUN=1)
    proc = run(["bash", RECIPES / "wmt16_en_de_big_codistill.sh"], check=False, env={**env, "NGPU": "3"})
    assert proc.returncode != 0 and "NGPU=3 GPUs do not split evenly over NUM_MODELS=2" in proc.stderr
    proc = run(["bash", RECIPES / "iwslt14_big_allreduce.sh"], check=False, env={**env, "NGPU": "16"})
    assert proc.returncode != 0 and "BATCH=4 micro-batches do not split" in proc.stderr
    proc = run(["bash", RECIPES / "iwslt14_big_allreduce.sh"], check=False,
               env={k: v for k, v in env.items() if k != "DATA"})
    assert proc.returncode != 0 and "set DATA to the data-bin" in proc.stderr


@pytest.mark.e2e
def test_tiny_iwslt14_chain(tmp_path_factory, tmp_path):
    data = prepare_iwslt14(tmp_path_factory) / "bin"
    knobs = dict(TINY=1, DATA=data, THREADS_PER_MODEL=1)
    run(["bash", RECIPES / "iwslt14_big_codistill.sh"], timeout=300,
        env=prep_env(SAVE_DIR=tmp_path / "codistill", **knobs))
    run(["bash", RECIPES / "iwslt14_big_allreduce.sh"], timeout=300,
        env=prep_env(SAVE_DIR=tmp_path / "allreduce", **knobs))

    # the codistilled models read each other's snapshots and paid a penalty for differing
    for i in range(2):
        records = json_logs((tmp_path / "codistill" / f"model{i}" / "train.log").read_text())
        assert records[-1]["num_updates"] == 40 and records[-1]["num_peers"] == 1
        assert records[-1]["codistill_loss"] > 0
    assert "label_smoothed_cross_entropy" in (tmp_path / "allreduce" / "train.log").read_text()

    # eval.sh from SAVE_DIR alone: eval.env gives it DATA, beam, length penalty, AVG
    for run_dir in ("codistill", "allreduce"):
        run(["bash", RECIPES / "eval.sh"], timeout=300, env=prep_env(SAVE_DIR=tmp_path / run_dir))
    results = {name: json.loads((tmp_path / name / "eval.json").read_text())
               for name in ("codistill/model0", "codistill/model1", "codistill/ensemble", "allreduce")}
    for name, result in results.items():
        assert 0 <= result["bleu"] <= 100 and "tok:13a" in result["sacrebleu"], name
        assert result["split"] == "test" and result["num_sentences"] == 40
        # a 2-layer model after 40 updates: far from the uniform 200-piece distribution
        # (log2 200 = 7.6 bits) but far from trained too
        assert 1 < result["valid_nll"] < math.log2(200), name
    ensemble = results["codistill/ensemble"]
    assert ensemble["checkpoint"] == ":".join(
        str(tmp_path / "codistill" / f"model{i}" / "checkpoint.avg2.pt") for i in range(2))
    # -log of a mean of probabilities is at most the mean of the -logs (Jensen), token by
    # token: the ensemble's NLL is at most the models' mean (P- lines have 4 decimals)
    members = [results[f"codistill/model{i}"]["valid_nll"] for i in range(2)]
    assert ensemble["valid_nll"] <= sum(members) / 2 + 1e-3
    assert results["allreduce"]["checkpoint"] == str(tmp_path / "allreduce" / "checkpoint.avg2.pt")
