"""Loading fairseq checkpoints on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses any
global it does not know. A fairseq checkpoint file holds exactly one such global, the
``argparse.Namespace`` of its legacy ``args``/``cfg.model``, so resume,
``fairseq-generate`` and peer loading fail. A model on several ranks needs more: rank 0
loads the checkpoint, turns its config into omegaconf containers and broadcasts the
whole state to the other ranks through torch.save and torch.load (fairseq's
``broadcast_object``, tensors replaced by placeholders), which then meet omegaconf's
classes (``torch.serialization.get_unsafe_globals_in_checkpoint`` of such a state lists
exactly these). We allowlist
those types and no others, rather than turning ``weights_only`` off for the whole
process: checkpoints keep being unpickled by torch's restricted loader.
"""
import argparse
import collections
import logging
import typing
import os
import shutil
import zipfile
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

def fairseq_checkpoint_globals() -> list:
    """The types in a fairseq checkpoint file, and in the state rank 0 broadcasts (where
    fairseq stands in a placeholder of its own for each tensor, sent apart)."""
    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [argparse.Namespace, DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
            typing.Any, collections.defaultdict, dict, list, int, _TensorPlaceholder]


def allow_fairseq_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read fairseq checkpoints. Idempotent."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


def load_checkpoint_state(path, keys=None):
    """Read a fairseq checkpoint on the CPU; tensors memory-mapped, not copied.

    With ``keys``, returns only those top-level entries, so reading the small task
    state out of a multi-GB checkpoint costs only its pickle, not its tensors.
    """
    allow_fairseq_checkpoints()
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state if keys is None else {k: state.get(k) for k in keys}


def is_complete(path) -> bool:
    """Cheap check that a checkpoint file was written to the end: torch.save writes a
    zip archive whose directory comes last, so a torn file has none."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def repair_checkpoint_last(save_dir) -> Optional[Path]:
    """Replace a torn ``checkpoint_last.pt`` by the newest complete sibling.

    fairseq writes its first checkpoint of a save atomically (temp + rename) but makes
    ``checkpoint_last.pt`` as a plain copy of it, so a job killed during that copy leaves
    a torn file that stops the restart. The file it was copied from is complete and at
    least as new as any other; we copy it back atomically. Returns the source used.
    """
    last = Path(save_dir) / "checkpoint_last.pt"
    if not last.exists() or is_complete(last):
        return None
    siblings = [p for p in Path(save_dir).glob("checkpoint*.pt")
                if p.name != "checkpoint_last.pt" and is_complete(p)]
    if not siblings:
        logger.warning("codistill: %s is torn and no complete checkpoint is left beside it", last)
        return None
    source = max(siblings, key=lambda p: p.stat().st_mtime)
    tmp = last.with_name(last.name + ".repair")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, last)
    logger.warning("codistill: %s was torn (the job died while fairseq copied it); restored it "
                   "from %s", last, source.name)
    return source
