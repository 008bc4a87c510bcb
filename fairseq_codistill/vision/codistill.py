"""Codistillation for image classifiers: the NMT task's snapshot exchange and the shared
loss core, driven once per update by the vision trainer.

Model i adds ``alpha * 1/(n-1) * sum_j D(f_i(x), f_j(x))`` to its cross-entropy, where
f_j are the logits of peer j's latest snapshot on model i's own batch (Sodhani et al.
2020, eq. 1). A peer may be of another architecture (ResNet50 with ResNeXt101) as long
as it predicts the same classes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fairseq_codistill.exchange import PeerExchange
from fairseq_codistill.snapshot import SnapshotError
from fairseq_codistill.loss import codistill_penalty
from fairseq_codistill.vision.models import arch_error, build_model
from fairseq_codistill.options import alpha_schedule, exchange_config


def model_meta(arch: str, num_classes: int) -> dict:
    """What a peer needs to rebuild this model from a snapshot."""
    return {"arch": arch, "num_classes": num_classes}


def build_peer(meta: dict, memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    return build_model(str(meta["arch"]), int(meta["num_classes"])).to(memory_format=memory_format)


class Codistillation:
    """This model's exchange, alpha schedule and penalty."""

    def __init__(self, args, model: nn.Module, num_classes: int, group=None):
        self.schedule = alpha_schedule(args)
        self.kind, self.temperature = args.codistill_loss, args.codistill_temperature
        self.num_classes = num_classes
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        self.exchange = PeerExchange(exchange_config(args),
                                     build_peer=lambda meta: build_peer(meta, layout),
                                     meta=model_meta(args.arch, num_classes),
                                     check_peer=self.check_peer, group=group)

    def check_peer(self, meta: dict) -> None:
        if meta.get("num_classes") != self.num_classes:
            raise SnapshotError(
                f"the peer predicts {meta.get('num_classes')} classes but this model "
                f"{self.num_classes}: codistilled models must train on the same classes")
        error = arch_error(str(meta.get("arch")))
        if error:
            raise SnapshotError(f"cannot rebuild the peer's model here: {error}")

    def step(self, num_updates: int, model: nn.Module) -> None:
        """Before every update: publish and swap snapshots every --codistill-interval."""
        self.exchange.step(num_updates, model)

    def alpha(self, epoch: int, num_updates: int, num_lr_decays: int) -> float:
        return self.schedule(epoch, num_updates, num_lr_decays)

    def penalty(self, images: torch.Tensor, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """D averaged over the active peers and over the batch; None without a peer."""
        peers = self.exchange.active_peers()
        if not peers:
            return None
        with torch.inference_mode():
            # A peer may run in another dtype (--codistill-peer-dtype); autocast, when on,
            # casts again per op.
            peer_logits = [peer(images.to(next(peer.parameters()).dtype)) for peer in peers]  # [(B, C)]
        total = codistill_penalty(logits, peer_logits, kind=self.kind, reduction="sum",
                                  temperature=self.temperature)
        return total / logits.shape[0]

    def stats(self) -> dict:
        return {"num_peers": len(self.exchange.active_peers()),
                "peer_staleness": self.exchange.staleness(),
                "codistill_bytes": self.exchange.bytes_read}

    def close(self) -> None:
        self.exchange.close()
