"""fairseq_codistill.precision: fast-bf16 detection and fairseq-train --cpu --bf16."""
import argparse
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_TRAIN, run, tool
from fairseq_codistill import precision

MKLDNN_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(info) == {"fpu", "avx512f", "amx_bf16", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("flags, fast", [
    ({"avx512f", "avx2"}, False),            # bf16 emulated through fp32: slower
    ({"avx512f", "avx512_bf16"}, MKLDNN_BF16),
    ({"amx_bf16", "amx_tile"}, MKLDNN_BF16),
])
def test_fast_bf16_on_a_cpu_needs_bf16_instructions(flags, fast):
    assert precision.fast_bf16("cpu", frozenset(flags)) is fast
    assert precision.fast_half("cpu", frozenset(flags)) == ("bf16" if fast else "fp32")


def test_the_command_prints_what_fast_half_says():
    proc = run([sys.executable, "-m", "fairseq_codistill.precision"], timeout=60)
    assert proc.stdout.strip() == precision.fast_half("cpu") in ("bf16", "fp32")


def common(**flags):
    return OmegaConf.create({"common": {"cpu": False, "bf16": False, "tpu": False, **flags}})


@pytest.mark.parametrize("cpu", [True, False])  # --cpu, or a GPU
def test_bf16_clears_the_tpu_that_fairseq_implies(cpu):
    cfg = common(cpu=cpu, bf16=True, tpu=True)
    assert precision.clear_implied_tpu(cfg) is True
    assert cfg.common.tpu is False and cfg.common.bf16 is True
    ns = argparse.Namespace(cpu=cpu, bf16=True, tpu=True)  # fairseq's args before conversion
    assert precision.clear_implied_tpu(ns) is True and ns.tpu is False


@pytest.mark.parametrize("flags", [
    dict(cpu=False, bf16=False, tpu=True),  # --tpu alone: not ours to judge
    dict(cpu=True, bf16=False, tpu=False),
])
def test_other_runs_pass_through_untouched(flags):
    cfg = common(**flags)
    assert precision.clear_implied_tpu(cfg) is False
    assert cfg.common.tpu is flags["tpu"]


def test_a_real_tpu_keeps_its_flag(monkeypatch):
    monkeypatch.setattr(precision, "_has_xla", lambda: True)
    cfg = common(bf16=True, tpu=True)
    assert precision.clear_implied_tpu(cfg) is False and cfg.common.tpu is True


def test_the_fix_is_installed_once_when_fairseq_is_loaded():
    import fairseq_codistill  # noqa: F401  registers with fairseq
    from fairseq.distributed import utils as distributed_utils

    wrapped = distributed_utils.call_main
    assert wrapped._codistill_bf16
    precision.install_bf16_fix()
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


@pytest.mark.parametrize("choice, model, peer", [
    ("same", torch.float32, torch.float32),
    ("same", torch.bfloat16, torch.bfloat16),
    ("bf16", torch.float32, torch.bfloat16),
    ("fp16", torch.bfloat16, torch.float16),
])
def test_peer_dtype(choice, model, peer):
    assert precision.peer_dtype(choice, model, "cpu") == peer


@pytest.mark.parametrize("fast, model, peer", [
    (True, torch.float32, torch.bfloat16),   # a CPU with AMX / AVX512-BF16
    (False, torch.float32, torch.float32),   # elsewhere: the model's own dtype
    (False, torch.bfloat16, torch.bfloat16),
])
def test_auto_peer_dtype_is_bf16_only_where_it_is_fast(monkeypatch, fast, model, peer):
    monkeypatch.setattr(precision, "fast_bf16", lambda device: fast)
    assert precision.peer_dtype("auto", model, "cpu") == peer


def test_bad_peer_dtype_names_the_flag():
    with pytest.raises(ValueError, match="--codistill-peer-dtype"):
        precision.peer_dtype("fp8", torch.float32, "cpu")
