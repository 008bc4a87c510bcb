"""Loading fairseq checkpoints on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses any
global it does not know. A fairseq checkpoint holds exactly one such global, the
``argparse.Namespace`` of its legacy ``args``/``cfg.model``, so resume,
``fairseq-generate`` and peer loading fail. We allowlist that type (and only it)
rather than turning ``weights_only`` off for the whole process: checkpoints keep
being unpickled by torch's restricted loader.
"""
import argparse

import torch

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read fairseq checkpoints. Idempotent."""
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


def load_checkpoint_state(path, keys=None):
    """Read a fairseq checkpoint on the CPU; tensors memory-mapped, not copied.

    With ``keys``, returns only those top-level entries, so reading the small task
    state out of a multi-GB checkpoint costs only its pickle, not its tensors.
    """
    allow_fairseq_checkpoints()
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state if keys is None else {k: state.get(k) for k in keys}
