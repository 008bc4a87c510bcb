"""Half precision: which one a machine runs fast, and the dtype a peer runs in.

    python -m fairseq_codistill.core.precision                 # prints bf16 or fp32 (this CPU)
    python -m fairseq_codistill.core.precision --device cuda   # bf16, fp16 or fp32 (GPU 0)

Shell scripts choose their flags with it:

    [[ $(python -m fairseq_codistill.core.precision) == bf16 ]] && FLAGS+=(--bf16)

No fairseq import: the vision trainer, the Hugging Face trainer and the benchmarks use it
too (fairseq's ``--bf16`` off TPUs is ``fairseq_codistill.fairseq_plugin.bf16``).
"""
from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import FrozenSet, Optional

import torch

logger = logging.getLogger(__name__)

# CPU features that make oneDNN's bf16 matmuls faster than fp32 ones: AMX tiles (Sapphire
# Rapids and later) and AVX512-BF16 dot products (Cooper Lake, Zen 4). Without either,
# bf16 is emulated by converting to fp32 and is slower than fp32 itself.
FAST_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> FrozenSet[str]:
    """The feature flags of the first CPU listed (Linux); empty where unknown."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: str = "cpu", flags: Optional[FrozenSet[str]] = None) -> bool:
    """Whether bf16 matmuls beat fp32 ones on ``device`` ("cpu" or "cuda")."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags() if flags is None else flags
    return bool(FAST_BF16_CPU_FLAGS & flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fast_half(device: str = "cpu", flags: Optional[FrozenSet[str]] = None) -> str:
    """The half precision to train in on ``device``: "bf16", "fp16" (a GPU without bf16)
    or "fp32" (a CPU without fast bf16: there, half precision is slower)."""
    if fast_bf16(device, flags):
        return "bf16"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return "fp16"
    return "fp32"


# -- the peers' dtype (--codistill-peer-dtype) ---------------------------------------------

PEER_DTYPES = ("auto", "same", "bf16", "fp16")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def peer_dtype(choice: str, model_dtype: torch.dtype, device) -> torch.dtype:
    """The dtype a peer runs in, for --codistill-peer-dtype ``choice``, next to a model
    trained in ``model_dtype`` on ``device``."""
    if choice not in PEER_DTYPES:
        raise ValueError(f"--codistill-peer-dtype must be one of {PEER_DTYPES} (got {choice!r})")
    if choice == "auto":
        choice = "bf16" if fast_bf16(torch.device(device).type) else "same"
    return model_dtype if choice == "same" else HALF_DTYPES[choice]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fairseq_codistill.core.precision",
                                description="Print the precision this machine trains fastest in: "
                                "bf16, fp16 (a GPU without bf16) or fp32.")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    print(fast_half(p.parse_args(argv).device))


if __name__ == "__main__":
    main()
