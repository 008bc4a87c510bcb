"""End to end with fairseq's own tools: fairseq-train with codistill_ce (no peers), resume
from checkpoint_last.pt on torch >= 2.6, then fairseq-generate on the trained model."""
import pytest

from conftest import PLUGIN, TINY_TRAIN, json_logs, run, tool

pytestmark = pytest.mark.e2e


def train(data_bin, save_dir, max_update, *extra, check=True):
    return run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--criterion", "codistill_ce",
                "--save-dir", save_dir, "--max-update", str(max_update), *extra], check=check)


def test_train_resume_and_generate(data_bin, tmp_path):
    save = tmp_path / "ckpt"
    first = train(data_bin, save, 10, "--codistill-alpha", "0.7")
    assert (save / "checkpoint_last.pt").is_file() and (save / "checkpoint_best.pt").is_file()
    records = json_logs(first.stderr + first.stdout, "train_inner")
    assert [r["num_updates"] for r in records] == [5, 10]
    last = records[-1]
    # no peer under --task translation: the penalty is 0 and loss is the pure NLL
    assert last["codistill_loss"] == 0.0 and last["num_peers"] == 0
    assert last["alpha"] == 0.7 and last["loss"] == last["nll_loss"]
    valid = json_logs(first.stderr + first.stdout, "valid")
    assert valid[-1]["loss"] > 0 and "codistill_loss" not in valid[-1]

    second = train(data_bin, save, 15, "--codistill-alpha", "0.7")
    out = second.stderr + second.stdout
    assert "Loaded checkpoint" in out and "@ 10 updates" in out
    assert [r["num_updates"] for r in json_logs(out, "train_inner")] == [15]

    gen = run([tool("fairseq-generate"), data_bin, "--path", save / "checkpoint_last.pt",
               "--user-dir", PLUGIN, "--gen-subset", "test", "--beam", "2", "--max-tokens", "500",
               "--cpu", "--num-workers", "0"])
    hypotheses = [line for line in gen.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 40  # the whole test split
    assert "BLEU" in gen.stdout


def test_update_freq_advances_alpha_once_per_update(data_bin, tmp_path):
    # 400 sentences at --max-tokens 500 and --update-freq 2: a few updates per epoch; the
    # exponential schedule must follow epochs, whatever the number of micro-batches
    # A lone codistill_translation model whose peer never appears: alpha 0 in effect
    # (no peer), no error, and alpha still follows the schedule for when one appears.
    proc = train(data_bin, tmp_path / "uf", 12, "--update-freq", "2",
                 "--codistill-alpha", "1", "--codistill-alpha-schedule", "exponential",
                 "--codistill-gamma", "2", "--log-interval", "1", "--task", "codistill_translation",
                 "--codistill-dir", tmp_path / "x", "--codistill-id", "0",
                 "--codistill-interval", "4")
    epochs = {}
    for r in json_logs(proc.stderr + proc.stdout, "train"):
        epochs[int(r["epoch"])] = r["alpha"]
    assert len(epochs) >= 2
    for epoch, alpha in epochs.items():
        assert alpha == pytest.approx(2.0 ** (epoch - 1))  # alpha0 * gamma^(epoch-1)
    inner = json_logs(proc.stderr + proc.stdout, "train_inner")
    assert inner[-1]["num_updates"] == 12
    assert {r["num_peers"] for r in inner} == {0}
    assert {r["codistill_loss"] for r in inner} == {0.0}
    # it published at updates 4 and 8 (not 12: training ends before that update's step),
    # beside its lease; and it says, last, that it never had a peer
    assert sorted(p.name for p in (tmp_path / "x" / "model0").iterdir()) == [
        "lease.json", "snapshot-0000000004.cds", "snapshot-0000000008.cds"]
    assert "model 0 trained without any peer" in (proc.stderr + proc.stdout).strip().splitlines()[-1]


def test_bad_flag_fails_before_training(data_bin, tmp_path):
    proc = train(data_bin, tmp_path / "bad", 5, "--codistill-gamma", "-1", check=False)
    assert proc.returncode != 0
    assert "gamma (--codistill-gamma) must be > 0 (got -1.0)" in proc.stderr
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()


def test_help_lists_every_flag():
    proc = run([tool("fairseq-train"), "--user-dir", PLUGIN, "--criterion", "codistill_ce", "--help"])
    for flag in ("--codistill-alpha", "--codistill-alpha-schedule", "--codistill-gamma",
                 "--codistill-alpha-max", "--codistill-burn-in-updates", "--codistill-loss",
                 "--codistill-temperature"):
        assert flag in proc.stdout
