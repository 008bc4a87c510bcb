"""Codistillation for image classifiers: the public ``Codistillation`` object with what
an image model's peers need (rebuilding one from a snapshot, refusing another label set),
driven once per update by the vision trainer.

Model i adds ``alpha * 1/(n-1) * sum_j D(f_i(x), f_j(x))`` to its cross-entropy, where
f_j are the logits of peer j's latest snapshot on model i's own batch (Sodhani et al.
2020, eq. 1). A peer may be of another architecture (ResNet50 with ResNeXt101) as long
as it predicts the same classes.
"""
from __future__ import annotations

import torch
from torch import nn

from fairseq_codistill.codistillation import Codistillation
from fairseq_codistill.exchange.snapshot import SnapshotError
from fairseq_codistill.vision.models import arch_error, build_model


def model_meta(arch: str, num_classes: int) -> dict:
    """What a peer needs to rebuild this model from a snapshot."""
    return {"arch": arch, "num_classes": num_classes}


def build_peer(meta: dict, memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    return build_model(str(meta["arch"]), int(meta["num_classes"])).to(memory_format=memory_format)


def check_peer(meta: dict, num_classes: int) -> None:
    """Refuse a peer that predicts other classes or that this install cannot build."""
    if meta.get("num_classes") != num_classes:
        raise SnapshotError(
            f"the peer predicts {meta.get('num_classes')} classes but this model "
            f"{num_classes}: codistilled models must train on the same classes")
    error = arch_error(str(meta.get("arch")))
    if error:
        raise SnapshotError(f"cannot rebuild the peer's model here: {error}")


def codistillation(args, model: nn.Module, num_classes: int, group=None) -> Codistillation:
    """This model's exchange, alpha schedule and penalty, from the trainer's flags."""
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    return Codistillation(model, args, build_peer=lambda meta: build_peer(meta, layout),
                          meta=model_meta(args.arch, num_classes),
                          check_peer=lambda meta: check_peer(meta, num_classes), group=group)

