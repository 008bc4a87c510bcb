"""fairseq_codistill.fairseq_plugin.bf16: fairseq-train --cpu --bf16 (fairseq's --bf16
implies --tpu, which the plugin clears when there is no TPU)."""
import argparse

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_TRAIN, run, tool
from fairseq_codistill.fairseq_plugin import bf16


def common(**flags):
    return OmegaConf.create({"common": {"cpu": False, "bf16": False, "tpu": False, **flags}})


@pytest.mark.parametrize("cpu", [True, False])  # --cpu, or a GPU
def test_bf16_clears_the_tpu_that_fairseq_implies(cpu):
    cfg = common(cpu=cpu, bf16=True, tpu=True)
    assert bf16.clear_implied_tpu(cfg) is True
    assert cfg.common.tpu is False and cfg.common.bf16 is True
    ns = argparse.Namespace(cpu=cpu, bf16=True, tpu=True)  # fairseq's args before conversion
    assert bf16.clear_implied_tpu(ns) is True and ns.tpu is False


@pytest.mark.parametrize("flags", [
    dict(cpu=False, bf16=False, tpu=True),  # --tpu alone: not ours to judge
    dict(cpu=True, bf16=False, tpu=False),
])
def test_other_runs_pass_through_untouched(flags):
    cfg = common(**flags)
    assert bf16.clear_implied_tpu(cfg) is False
    assert cfg.common.tpu is flags["tpu"]


def test_a_real_tpu_keeps_its_flag(monkeypatch):
    monkeypatch.setattr(bf16, "_has_xla", lambda: True)
    cfg = common(bf16=True, tpu=True)
    assert bf16.clear_implied_tpu(cfg) is False and cfg.common.tpu is True


def test_the_fix_is_installed_once_when_fairseq_is_loaded():
    import fairseq_codistill  # noqa: F401  registers with fairseq
    from fairseq.distributed import utils as distributed_utils

    wrapped = distributed_utils.call_main
    assert wrapped._codistill_bf16
    bf16.install_bf16_fix()
    assert distributed_utils.call_main is wrapped


@pytest.mark.e2e
def test_fairseq_train_cpu_bf16_trains_in_bf16(data_bin, tmp_path):
    save = tmp_path / "ck"
    proc = run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--bf16", "--task", "translation",
                "--criterion", "codistill_ce", "--max-update", "10", "--save-dir", save,
                "--no-epoch-checkpoints"], timeout=120)
    out = proc.stdout + proc.stderr
    assert "training bf16 on the CPU" in out
    assert "num_updates" in out and "done training" in out
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    # fairseq saves weights as fp32 whatever the training dtype; the config says bf16.
    assert state["cfg"]["common"]["bf16"] is True and state["cfg"]["common"]["tpu"] is False


def test_bf16_clears_every_group_that_copied_the_tpu_flag():
    """With 2 ranks fairseq's distributed_training.tpu would pick its TPU DDP wrapper,
    which imports torch_xla at the first all-reduce."""
    cfg = OmegaConf.create({"common": {"cpu": True, "bf16": True, "tpu": True},
                            "distributed_training": {"distributed_world_size": 2, "tpu": True},
                            "optimizer": {"_name": "adam", "tpu": True}, "task": {"data": "x"}})
    assert bf16.clear_implied_tpu(cfg) is True
    assert not cfg.common.tpu and not cfg.distributed_training.tpu and not cfg.optimizer.tpu
    assert "tpu" not in cfg.task
