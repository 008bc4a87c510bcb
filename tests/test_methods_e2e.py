"""LocalSGD and DiLoCo end to end: fairseq-train jobs averaging their weights through the
exchange, against a codistilled pair; a resumed run; the forgotten criterion; pairs that
cannot average (two architectures, two intervals) stopped before training."""
import re
import time

import pytest
import torch

from conftest import TINY_TRAIN, json_logs, record_figure, run, tool
from fairseq_codistill.fairseq_plugin.checkpoints import load_checkpoint_state

pytestmark = pytest.mark.e2e

INTERVAL = 5
# Any criterion: label smoothing, as one would train them in practice (and the study does).
AVERAGING = TINY_TRAIN + ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                          "--codistill-interval", str(INTERVAL), "--codistill-wait-for-peers", "120"]
DISTILL = TINY_TRAIN + ["--criterion", "codistill_ce", "--codistill-interval", str(INTERVAL),
                        "--codistill-alpha", "1", "--codistill-wait-for-peers", "120",
                        "--codistill-max-lead", str(INTERVAL)]


def launch(data_bin, run_dir, train_args, max_update, timeout=400, model1=None, check=True):
    """Two models; ``model1``: fairseq-train arguments for model 1 alone."""
    return run([tool("fairseq-codistill-launch"), "--num-models", "2", "--threads-per-model", "1",
                "--codistill-dir", run_dir / "x", "--save-dir", run_dir, "--progress-interval", "5",
                *(["--model-args", "1", model1] if model1 else []),
                "--", data_bin, *train_args, "--max-update", max_update], timeout=timeout, check=check)


def weights(run_dir, i):
    model = load_checkpoint_state(run_dir / f"model{i}" / "checkpoint_last.pt")["model"]
    return {k: v.float() for k, v in model.items() if v.is_floating_point()}


def distance(run_dir):
    """L2 distance between the two models' final weights."""
    w0, w1 = weights(run_dir, 0), weights(run_dir, 1)
    return sum((w0[k] - w1[k]).pow(2).sum().item() for k in w0) ** 0.5


def averaged_at(log):
    return [int(u) for u in re.findall(r"averaged models \[0, 1\] at update (\d+)", log)]


def test_localsgd_and_diloco_pairs_end_far_closer_than_a_codistilled_pair(data_bin, tmp_path):
    runs = {"distill": DISTILL,
            "localsgd": AVERAGING + ["--codistill-method", "localsgd"],
            "diloco": AVERAGING + ["--codistill-method", "diloco"]}
    dist = {}
    for method, args in runs.items():
        launch(data_bin, tmp_path / method, args, 20)
        dist[method] = distance(tmp_path / method)
    for method in ("localsgd", "diloco"):
        for i in (0, 1):
            log = (tmp_path / method / f"model{i}" / "train.log").read_text()
            # Every interval, both models, the last update too: a run of a multiple of K
            # updates ends on the shared weights.
            assert averaged_at(log) == [5, 10, 15, 20], method
            assert f"model {i} trains with --seed {1 + i} (the given seed + its id) from the " \
                   "initial weights of --seed 1" in log
            assert json_logs(log)[-1]["codistill_bytes"] > 0
        assert dist[method] == 0.0 < dist["distill"], dist  # the same mean, bit for bit
    record_figure("methods", "final weight distance of a pair (20 updates, interval 5)",
                  ", ".join(f"{m} {d:.2f}" for m, d in dist.items()))


def test_a_resumed_diloco_run_ends_with_the_weights_of_an_uninterrupted_one(data_bin, tmp_path):
    """The shared weights and the outer momentum are in fairseq's checkpoints."""
    args = AVERAGING + ["--codistill-method", "diloco"]
    launch(data_bin, tmp_path / "whole", args, 20)
    launch(data_bin, tmp_path / "halves", args, 10)
    launch(data_bin, tmp_path / "halves", args, 20)  # resumes from checkpoint_last.pt
    log = (tmp_path / "halves" / "model0" / "train.log").read_text()
    # The first half averaged at its last update, 10, before saving: the resumed half
    # does not average 10 again.
    assert "resumed task state" in log and averaged_at(log) == [5, 10, 15, 20]
    for i in (0, 1):
        whole, halves = weights(tmp_path / "whole", i), weights(tmp_path / "halves", i)
        assert all(torch.equal(whole[k], halves[k]) for k in whole), f"model {i} differs"


def test_a_codistilling_job_without_the_criterion_stops_before_training(data_bin, tmp_path):
    """fairseq's default criterion, cross_entropy, never asks for peers: two such jobs would
    exchange snapshots and train alone."""
    proc = run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--task", "codistill_translation",
                "--codistill-dir", tmp_path / "x", "--codistill-id", "0", "--save-dir", tmp_path / "m0",
                "--max-update", "10"], check=False, timeout=120)
    assert proc.returncode != 0
    assert "ValueError: --criterion cross_entropy ignores the peers" in proc.stderr
    assert "Use --criterion codistill_ce" in proc.stderr
    assert not (tmp_path / "m0" / "checkpoint_last.pt").exists()
    record_figure("bad command lines", "a codistilling fairseq-train job without --criterion",
                  f"exit {proc.returncode} before training, naming --criterion")


@pytest.mark.parametrize("model1, says", [
    ("--encoder-layers 1", ["--codistill-method localsgd: model", "averages weights of another "
                            "architecture", "encoder.layers.1.", "--codistill-method distill "
                            "codistills models that differ"]),
    ("--codistill-interval 15", ["--codistill-interval 1", "disagrees with model"]),
])
def test_models_that_cannot_average_both_stop_before_training(data_bin, tmp_path, model1, says):
    """Before this check a one-layer model averaged the shared half of a two-layer one at
    every step, and models of intervals 10 and 15 each waited at their first step, then
    trained alone to the end. The model that starts second is refused as it takes its
    lease; the first, at its start-up check."""
    args = AVERAGING + ["--codistill-method", "localsgd", "--codistill-interval", "10"]
    start = time.monotonic()
    proc = launch(data_bin, tmp_path, args, 30, timeout=300, model1=model1, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode != 0
    for i in (0, 1):
        log = (tmp_path / f"model{i}" / "train.log").read_text()
        error = next(line for line in log.splitlines() if line.startswith("ValueError: "))
        assert all(s in error for s in says), error
        assert not json_logs(log) and not (tmp_path / f"model{i}" / "checkpoint_last.pt").exists()
    record_figure("bad command lines", f"a localsgd pair whose model 1 has {model1}",
                  f"both exit non-zero before update 1, naming the flag ({seconds:.0f}s)")
