"""fairseq-train ``--bf16`` on a CPU or a GPU, without a TPU: fairseq's options.py sets
``tpu = True`` whenever ``bf16`` is set (bf16 was TPU-only when it was written)."""
from __future__ import annotations

import argparse
import importlib.util
import logging

logger = logging.getLogger(__name__)


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
        from omegaconf import DictConfig, open_dict

        # every group that copied the flag: with 2 ranks distributed_training.tpu picks
        # fairseq's TPU DDP wrapper, which imports torch_xla at the first all-reduce
        groups = [common] + [g for g in (cfg.get(k) for k in cfg) if isinstance(g, DictConfig)
                             and g is not common and g.get("tpu", False)]
        for group in groups:
            with open_dict(group):
                group.tpu = False
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
