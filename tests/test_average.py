"""fairseq_codistill.tools.average: which checkpoints, and their mean, on hand-made checkpoints
in fairseq's layout (a real one is averaged by the recipe chain in test_recipes.py)."""
import argparse

import pytest
import torch

from fairseq_codistill.tools.average import average_checkpoints, last_checkpoints, main
from fairseq_codistill.fairseq_plugin.checkpoints import load_checkpoint_state


def save_checkpoint(path, weight, bias, steps, epoch):
    torch.save({
        "cfg": {"model": argparse.Namespace(arch="transformer")},  # legacy args: a Namespace
        "model": {"w": torch.tensor(weight), "b": torch.tensor(bias, dtype=torch.float16),
                  "version": torch.tensor([steps])},
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "num_updates": steps}],
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.ones(2)}}},
        "extra_state": {"epoch": epoch},
    }, path)


@pytest.fixture
def save_dir(tmp_path):
    for epoch, (w, b) in enumerate([([1.0, 2.0], 0.5), ([3.0, 4.0], 1.0), ([5.0, 9.0], 2.0)], 1):
        save_checkpoint(tmp_path / f"checkpoint{epoch}.pt", w, b, steps=10 * epoch, epoch=epoch)
        save_checkpoint(tmp_path / f"checkpoint_{epoch}_{100 * epoch}.pt", w, b, 10 * epoch, epoch)
    save_checkpoint(tmp_path / "checkpoint_last.pt", [0.0, 0.0], 0.0, steps=99, epoch=9)
    save_checkpoint(tmp_path / "checkpoint_best.pt", [0.0, 0.0], 0.0, steps=99, epoch=9)
    (tmp_path / "checkpoint.avg2.pt").write_text("an earlier average, not an epoch checkpoint")
    return tmp_path


def test_last_epoch_and_update_checkpoints(save_dir):
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(last_checkpoints(save_dir, 2)) == ["checkpoint3.pt", "checkpoint2.pt"]
    assert names(last_checkpoints(save_dir, 2, upper_bound=2)) == ["checkpoint2.pt", "checkpoint1.pt"]
    assert names(last_checkpoints(save_dir, 1, by_update=True)) == ["checkpoint_3_300.pt"]
    with pytest.raises(ValueError, match="has 3 epoch checkpoints .* fewer than the 4"):
        last_checkpoints(save_dir, 4)


def test_average_of_the_last_two(save_dir):
    state = average_checkpoints(last_checkpoints(save_dir, 2))
    # w: ([5, 9] + [3, 4]) / 2 = [4, 6.5]; b: (2 + 1) / 2 = 1.5, stored in float32
    assert torch.equal(state["model"]["w"], torch.tensor([4.0, 6.5]))
    assert state["model"]["b"].dtype == torch.float32 and state["model"]["b"].item() == 1.5
    # an integer buffer is not averaged: the newest checkpoint's (epoch 3, 30 steps)
    assert state["model"]["version"].tolist() == [30]
    assert state["extra_state"] == {"epoch": 3}
    assert "last_optimizer_state" not in state


def test_main_writes_a_checkpoint_fairseq_can_load(save_dir, tmp_path):
    out = tmp_path / "avg" / "checkpoint.avg3.pt"
    assert main(["--inputs", str(save_dir), "--num-epoch-checkpoints", "3", "--output", str(out)]) == 0
    state = load_checkpoint_state(out)  # weights_only=True, with the Namespace in cfg
    # w: ([1, 2] + [3, 4] + [5, 9]) / 3 = [3, 5]; b: (0.5 + 1 + 2) / 3
    assert torch.equal(state["model"]["w"], torch.tensor([3.0, 5.0]))
    assert state["model"]["b"].item() == pytest.approx(3.5 / 3)
    assert state["cfg"]["model"].arch == "transformer"
    assert [p.name for p in out.parent.iterdir()] == ["checkpoint.avg3.pt"]  # no temp file left


def test_explicit_files_and_errors(save_dir, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    files = [str(save_dir / "checkpoint1.pt"), str(save_dir / "checkpoint2.pt")]
    assert main(["--inputs", *files, "--output", str(out)]) == 0
    assert torch.equal(load_checkpoint_state(out)["model"]["w"], torch.tensor([2.0, 3.0]))

    assert main(["--inputs", str(save_dir), "--num-epoch-checkpoints", "5", "--output", str(out)]) == 1
    assert "fewer than the 5 to average" in capsys.readouterr().err

    other = tmp_path / "other.pt"
    save_checkpoint(other, [0.0, 0.0, 0.0], 0.0, steps=1, epoch=1)
    assert main(["--inputs", files[0], str(other), "--output", str(out)]) == 1
    assert "w has shape (3,), (2,) in" in capsys.readouterr().err

    torch.save({"model": {"w": torch.zeros(2)}}, other)
    assert main(["--inputs", files[0], str(other), "--output", str(out)]) == 1
    assert "holds other parameters than" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["--inputs", *files, "--num-epoch-checkpoints", "2", "--output", str(out)])
    assert "take one directory" in capsys.readouterr().err
