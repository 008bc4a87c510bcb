"""``Codistillation``: codistillation (or LocalSGD, DiLoCo) for one model in any PyTorch
training loop. The exchange (snapshots, stores, leases) and the penalty are paired here
once; the fairseq task, the vision trainer and the Hugging Face trainer are thin front
ends over it.

    codistill = Codistillation(model, codistill_dir="runs/x", codistill_id=i,
                               codistill_interval=100)
    for update, (x, y) in enumerate(batches):
        codistill.step(update, epoch=update // len(loader) + 1)  # before the optimizer step
        logits = model(x)
        loss = F.cross_entropy(logits, y) + codistill.alpha * codistill.penalty(
            logits, lambda peer: peer(x))
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    codistill.close()

Options are the ``--codistill-*`` flags as keywords (``codistill_dir``, ``codistill_alpha``
...), with the same defaults and meanings (``fairseq_codistill.options``); bad values fail
at construction with a message naming the keyword. A peer is rebuilt from its snapshot by
``build_peer(meta)``, by default a copy of ``model``: pass your own to codistill models of
another architecture (``meta`` goes into every snapshot, ``check_peer(meta)`` refuses a
peer that cannot be used). No fairseq import.
"""
from __future__ import annotations

import contextlib
import copy
import re
from typing import Callable, Dict, List, Optional

import torch

from fairseq_codistill import options as opts
from fairseq_codistill.exchange.averaging import WeightAveraging, weight_shapes
from fairseq_codistill.exchange.peers import AVERAGING_METHODS, Exchange, PeerExchange, check_exchange_dir
from fairseq_codistill.core.loss import AlphaSchedule, peers_penalty

Weights = Dict[str, torch.Tensor]


def model_weights(model: torch.nn.Module) -> Weights:
    """What models that average their weights share, by name: parameters and the floating
    buffers that the model's state dict keeps (batch-norm statistics). A buffer a module
    makes for itself (``persistent=False``, as sinusoidal positions) stays as it is:
    averaged through a half-precision snapshot it would come back rounded, and differ from
    a resumed run's, which makes it anew."""
    kept = model.state_dict(keep_vars=True).keys()
    out = {n: b for n, b in model.named_buffers() if b.is_floating_point() and n in kept}
    out.update({n: p for n, p in model.named_parameters()})
    return out


class Codistillation:
    """One model's exchange, alpha schedule and penalty.

    ``options``: an object with the ``codistill_*`` attributes (a front end's parsed
    flags; errors then name the flags), or the keywords themselves (errors name the
    keywords). ``weights()``: what localsgd and diloco average, by default the model's
    parameters and floating buffers (a mixed-precision loop passes its fp32 masters).
    ``group``: the process group of this model's data-parallel ranks (default: the world,
    when torch.distributed is initialised); rank 0 publishes.
    """

    def __init__(self, model: torch.nn.Module, options=None, *,
                 build_peer: Optional[Callable[[dict], torch.nn.Module]] = None,
                 meta: Optional[dict] = None, check_peer: Optional[Callable[[dict], None]] = None,
                 group=None, weights: Optional[Callable[[], Weights]] = None, **keywords):
        if options is not None and keywords:
            raise TypeError("pass the codistill_* options either as one object or as keywords")
        keyword_style = options is None
        with _named_as_keywords(keyword_style):
            cfg = opts.defaults(**keywords) if keyword_style else options
            self.cfg = cfg
            self.schedule, exchange_cfg = _checked(cfg)
            self.kind, self.temperature = str(cfg.codistill_loss), cfg.codistill_temperature
            self.model = model
            self.weights = weights or (lambda: model_weights(model))
            self.epoch, self.num_updates, self.num_lr_decays = 1, 0, 0
            if exchange_cfg.method in AVERAGING_METHODS:
                # the names and shapes averaged go into the lease: models of another
                # architecture are refused before training
                self.exchange: Exchange = WeightAveraging(exchange_cfg, meta=meta, group=group,
                                                          shapes=weight_shapes(self.weights()))
            else:
                self.exchange = PeerExchange(
                    exchange_cfg, build_peer=build_peer or (lambda _: copy.deepcopy(model)),
                    meta=meta, check_peer=check_peer, group=group)

    @property
    def averages(self) -> bool:
        """Whether the models share weights (localsgd, diloco): then there is no penalty."""
        return isinstance(self.exchange, WeightAveraging)

    def set_penalty(self, schedule: AlphaSchedule, kind: str, temperature: float) -> None:
        """Take the penalty's settings from elsewhere (fairseq's criterion owns them)."""
        self.schedule, self.kind, self.temperature = schedule, kind, temperature

    # -- before each optimizer step ----------------------------------------------------
    def step(self, num_updates: int, epoch: Optional[int] = None, num_lr_decays: Optional[int] = None,
             weights: Optional[Callable[[], Weights]] = None,
             changed: Callable[[], None] = lambda: None) -> None:
        """Call before every optimizer step with the number of steps taken so far (a
        repeated call with the same number, as under gradient accumulation, does nothing
        new). Every ``codistill_interval`` steps it publishes this model and reads its
        peers, or averages the models' weights (then ``changed()`` runs): with localsgd
        and diloco, call it once more after the last optimizer step, so that a run of a
        multiple of K steps ends on the shared weights. ``epoch`` (1-based) and
        ``num_lr_decays`` move alpha along its schedule."""
        self.num_updates = num_updates
        if epoch is not None:
            self.epoch = epoch
        if num_lr_decays is not None:
            self.num_lr_decays = num_lr_decays
        if self.averages:
            self.exchange.step(num_updates, weights or self.weights, changed)
        else:
            self.exchange.step(num_updates, self.model)

    @property
    def alpha(self) -> float:
        """The penalty's weight now (0 with localsgd and diloco)."""
        if self.averages:
            return 0.0
        return self.schedule(self.epoch, self.num_updates, self.num_lr_decays)

    def peers(self) -> List[torch.nn.Module]:
        """The peer models in use: loaded, and not staler than allowed."""
        return [] if self.averages else self.exchange.active_peers()

    def penalty(self, logits: torch.Tensor, run_peer: Callable[[torch.nn.Module], torch.Tensor],
                mask: Optional[torch.Tensor] = None, reduction: str = "mean") -> torch.Tensor:
        """D between ``logits`` (..., V) and each peer's ``run_peer(peer)`` on the same batch,
        averaged over the peers: the MSE of the logits (or KL), over the positions where
        ``mask`` is True, summed, averaged over them ("mean") or per position ("none").
        Zero, with no peer forward, when alpha is 0 or there is no peer yet."""
        peers = self.peers() if self.alpha > 0 else []
        if not peers:
            return logits.new_zeros(logits.shape[:-1] if reduction == "none" else (), dtype=torch.float32)
        return peers_penalty(logits, peers, run_peer, mask=mask, kind=self.kind, reduction=reduction,
                             temperature=self.temperature)

    # -- what to log and to keep -------------------------------------------------------
    def metrics(self) -> Dict[str, float]:
        """alpha and num_peers, and the exchange's: codistill_bytes, peer_staleness (or,
        averaging, averaged_models, average_wait and, async, average_staleness)."""
        out = {} if self.averages else {"alpha": self.alpha, "num_peers": float(len(self.peers()))}
        return {**out, **self.exchange.metrics()}

    def state_dict(self) -> dict:
        return {**self.exchange.state_dict(), "progress": {
            "epoch": self.epoch, "num_updates": self.num_updates, "num_lr_decays": self.num_lr_decays}}

    def load_state_dict(self, state: dict) -> None:
        """The exchange's counters and versions, and where alpha stood."""
        self.exchange.load_state_dict(state)
        progress = state.get("progress") or {}
        self.epoch = int(progress.get("epoch", self.epoch))
        self.num_updates = int(progress.get("num_updates", self.num_updates))
        self.num_lr_decays = int(progress.get("num_lr_decays", self.num_lr_decays))

    def close(self) -> None:
        """Finish the last write, mark the lease finished. Idempotent; also at exit."""
        self.exchange.close()


def _checked(cfg):
    """(alpha schedule, exchange config) of the options ``cfg``; errors name the flags."""
    schedule = opts.alpha_schedule(cfg)
    opts.check_penalty(cfg)
    exchange_cfg = opts.exchange_config(cfg)
    exchange_cfg.validate()
    return schedule, exchange_cfg


def check_options(**keywords) -> None:
    """Check codistill_* keywords, and that their store can work, without starting an
    exchange (a front end does it before training); errors name the keyword."""
    with _named_as_keywords(True):
        cfg = opts.defaults(**keywords)
        _checked(cfg)
        check_exchange_dir(cfg.codistill_dir)


_FLAG = re.compile(r"--codistill-([a-z-]+)")


@contextlib.contextmanager
def _named_as_keywords(on: bool):
    """Within it, an error naming the flag ``--codistill-x-y`` names the keyword
    ``codistill_x_y`` instead (when ``on``): the Python front ends take keywords."""
    try:
        yield
    except (ValueError, TypeError) as error:
        if not on:
            raise
        message = _FLAG.sub(lambda m: "codistill_" + m.group(1).replace("-", "_"), str(error))
        raise type(error)(message.replace("--codistill-* options", "codistill_* keywords")) from error
