"""fairseq_codistill.core.precision: fast-bf16 detection and the peers' dtype."""
import sys

import pytest
import torch

from conftest import run
from fairseq_codistill.core import precision

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
    proc = run([sys.executable, "-m", "fairseq_codistill.core.precision"], timeout=60)
    assert proc.stdout.strip() == precision.fast_half("cpu") in ("bf16", "fp32")


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
