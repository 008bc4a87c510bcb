"""Half precision: which one a machine runs fast, and fairseq's ``--bf16`` on a CPU.

    python -m fairseq_codistill.precision                 # prints bf16 or fp32 (this CPU)
    python -m fairseq_codistill.precision --device cuda   # bf16, fp16 or fp32 (GPU 0)

Shell scripts choose their flags with it:

    [[ $(python -m fairseq_codistill.precision) == bf16 ]] && FLAGS+=(--bf16)

No fairseq import at module level: the vision trainer and the benchmarks use it too.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
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


# -- fairseq-train --bf16 without a TPU ----------------------------------------------------


def _has_xla() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def clear_implied_tpu(cfg) -> bool:
    """Let ``fairseq-train --bf16`` train in bf16 on a CPU (``--cpu``) or a GPU.

    fairseq's options.py sets ``tpu = True`` whenever ``bf16`` is set (bf16 was TPU-only
    when it was written), and the Trainer then asks torch_xla for its device: without
    torch_xla, ``--bf16`` dies with "'NoneType' object has no attribute 'xla_device'".
    Without torch_xla there is no TPU it could mean, so clear the flag; the Trainer then
    casts the model to bf16 on the CPU or the GPU, with fp32 master weights, as it does
    for --fp16. Returns whether it changed ``cfg``, fairseq's config (``cfg.common``) or
    its argparse namespace.
    """
    common = getattr(cfg, "common", cfg)
    if not (getattr(common, "bf16", False) and getattr(common, "tpu", False)) or _has_xla():
        return False
    if isinstance(common, argparse.Namespace):
        common.tpu = False
    else:
        from omegaconf import open_dict

        with open_dict(common):
            common.tpu = False
    logger.info("codistill: --bf16 without torch_xla: training bf16 on the %s (fairseq's "
                "--bf16 implies --tpu, cleared)", "CPU" if getattr(common, "cpu", False) else "GPU")
    return True


def install_bf16_fix() -> None:
    """Apply ``clear_implied_tpu`` in ``fairseq.distributed.utils.call_main``.

    That is the first place a ``--user-dir`` plugin can reach the parsed config: fairseq
    imports the plugin while it parses the command line, sets ``tpu`` after that, and
    fairseq-train and fairseq-validate hand the config to ``call_main``, which decides on
    TPU spawning before the Trainer reads it. Nothing in fairseq's files changes, and any
    run without ``--bf16`` (or with torch_xla installed) passes through untouched.
    Idempotent.
    """
    from fairseq.distributed import utils as distributed_utils

    call_main = distributed_utils.call_main
    if getattr(call_main, "_codistill_bf16", False):
        return

    def call_main_bf16(cfg, main, **kwargs):
        clear_implied_tpu(cfg)
        return call_main(cfg, main, **kwargs)

    call_main_bf16._codistill_bf16 = True
    call_main_bf16.__wrapped__ = call_main
    distributed_utils.call_main = call_main_bf16


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fairseq_codistill.precision",
                                description="Print the precision this machine trains fastest in: "
                                "bf16, fp16 (a GPU without bf16) or fp32.")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    print(fast_half(p.parse_args(argv).device))


if __name__ == "__main__":
    main()
