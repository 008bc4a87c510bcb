"""The codistillation loss core: the penalty between a model's and its peers' logits,
and the schedules of its weight alpha. Torch only, no fairseq, so that the NMT
criterion and the vision trainer share one implementation.

Model i takes the step (Sodhani et al. 2020, eq. 1)

    theta_i <- theta_i - lr * grad[ L(y, f_i(x)) + alpha * 1/(n-1) * sum_{j != i} D(f_i(x), f_j(x)) ]

where f_j(x) are peer j's logits on model i's own batch. ``codistill_penalty`` is the
second term without alpha: D averaged over the peers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

PENALTY_KINDS = ("mse", "kl")
REDUCTIONS = ("sum", "mean", "none")
SCHEDULES = ("constant", "exponential", "step")


def codistill_penalty(
    logits: torch.Tensor,
    peer_logits: Union[torch.Tensor, Sequence[torch.Tensor]],
    mask: Optional[torch.Tensor] = None,
    kind: str = "mse",
    reduction: str = "sum",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Distance between ``logits`` and the peers' logits, averaged over peers.

    Args:
        logits: (..., V) this model's logits; V is the vocabulary or the classes.
        peer_logits: one (..., V) tensor or a list of them, one per peer. They may be
            inference-mode tensors: nothing here saves them for backward.
        mask: bool (...), True where a position counts (non-padding). None: all count.
        kind: "mse" -- mean over V of the squared difference of raw logits, the
            paper's choice (no centering); "kl" -- KL(peer || own) of the softmaxes at
            ``temperature``, times temperature**2 so that gradient magnitudes do not
            shrink as the temperature grows (Hinton et al. 2015).
        reduction: "sum" over counted positions (fairseq normalises by its own
            sample size), "mean" over counted positions, or "none": a (...) tensor,
            zero where the mask is False.

    Always computed in fp32: an fp16 difference of large logits squares to inf.
    """
    if kind not in PENALTY_KINDS:
        raise ValueError(f"kind must be one of {PENALTY_KINDS} (got {kind!r})")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (got {reduction!r})")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    peers = [peer_logits] if isinstance(peer_logits, torch.Tensor) else list(peer_logits)
    if not peers:
        raise ValueError("peer_logits is empty: skip the penalty when there is no peer")
    for p in peers:
        if p.shape != logits.shape:
            raise ValueError(
                f"peer logits have shape {tuple(p.shape)}, expected {tuple(logits.shape)}"
            )

    if mask is not None and mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(logits.shape[:-1])}")
    if kind == "mse" and reduction != "none" and logits.requires_grad and torch.is_grad_enabled():
        total = _SummedMSE.apply(logits, mask, *peers)
        if reduction == "sum":
            return total
        count = total.new_tensor(logits.shape[:-1].numel() if mask is None else int(mask.sum()))
        return total / count.clamp(min=1)

    own = logits.float()
    per_position = own.new_zeros(own.shape[:-1])  # (...)
    if kind == "kl":
        own_logp = F.log_softmax(own / temperature, dim=-1)  # (..., V)
    for p in peers:
        # .float() of a peer that is fp32 already returns the same (maybe inference)
        # tensor; the ops below only ever save their own results for backward.
        peer = p.float()
        if kind == "mse":
            per_position = per_position + (own - peer).pow(2).mean(dim=-1)
        else:
            peer_logp = F.log_softmax(peer / temperature, dim=-1)
            kl = (peer_logp.exp() * (peer_logp - own_logp)).sum(dim=-1)
            per_position = per_position + kl * temperature**2
    per_position = per_position / len(peers)

    if mask is not None:
        per_position = per_position.masked_fill(~mask.bool(), 0.0)
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    count = per_position.numel() if mask is None else int(mask.sum())
    return total / max(count, 1)


def peers_penalty(
    logits: torch.Tensor,
    peers: Sequence[torch.nn.Module],
    run_peer: Callable[[torch.nn.Module], torch.Tensor],
    mask: Optional[torch.Tensor] = None,
    kind: str = "mse",
    reduction: str = "sum",
    temperature: float = 1.0,
) -> torch.Tensor:
    """``codistill_penalty`` against each peer's logits on the same batch,
    ``run_peer(peer)``, computed under ``torch.inference_mode()``: peers stay out of
    autograd (never optimised, no graph kept)."""
    with torch.inference_mode():
        peer_logits = [run_peer(peer) for peer in peers]  # [(..., V)]
    return codistill_penalty(logits, peer_logits, mask=mask, kind=kind, reduction=reduction,
                             temperature=temperature)


class _SummedMSE(torch.autograd.Function):
    """The "mse"/"sum" penalty with its gradient computed in the forward pass.

    The penalty is quadratic, so d/d(own) = 2/V * (own - mean_j peer_j) * mask: one fp32
    (N, V) buffer whatever the number of peers, and the only thing saved for backward (the
    peers' logits are never saved, so they may be inference tensors). The fp32 work runs a
    chunk of rows at a time, so no other full-size fp32 temporary exists. Autograd's own
    version kept the difference and its square alive: 1.25x the memory a peer must cost.
    """

    CHUNK_BYTES = 64 << 20

    @staticmethod
    def forward(ctx, own, mask, *peers):
        vocab = own.shape[-1]
        own_rows = own.reshape(-1, vocab)  # (N, V)
        peer_rows = [p.reshape(-1, vocab) for p in peers]
        keep = None if mask is None else mask.reshape(-1, 1).bool()  # (N, 1)
        grad = torch.empty(own_rows.shape, dtype=torch.float32, device=own.device)
        total = torch.zeros((), dtype=torch.float32, device=own.device)
        step = max(1, _SummedMSE.CHUNK_BYTES // (8 * vocab))
        for start in range(0, own_rows.shape[0], step):
            rows = slice(start, start + step)
            o = own_rows[rows].float()  # (n, V)
            peer_sum = torch.zeros_like(o)
            for q in peer_rows:
                q = q[rows].float()
                diff = o - q
                if keep is not None:
                    diff.mul_(keep[rows])
                total += diff.pow_(2).sum() / (vocab * len(peers))
                peer_sum += q
            g = grad[rows]
            torch.sub(o, peer_sum.div_(len(peers)), out=g)
            g.mul_(2.0 / vocab)
            if keep is not None:
                g.mul_(keep[rows])
        ctx.save_for_backward(grad)
        ctx.shape, ctx.dtype = own.shape, own.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        grad_own = (grad * grad_total).to(ctx.dtype).view(ctx.shape)
        return (grad_own, None) + (None,) * (len(ctx.needs_input_grad) - 2)


@dataclass(frozen=True)
class AlphaSchedule:
    """alpha as a pure function of training progress.

    - constant:    alpha0
    - exponential: alpha0 * gamma ** (epoch - 1)   (the paper's NMT schedule, gamma 1.1)
    - step:        alpha0 * gamma ** num_lr_decays (raise alpha at each LR decay, ImageNet)

    During the first ``burn_in_updates`` updates alpha is 0 (Anil et al. 2018); it is
    never above ``alpha_max`` when one is set (a large gamma otherwise explodes alpha).
    No defaults here: the --codistill-* options own them (``fairseq_codistill.options``).
    """

    alpha0: float
    kind: str
    gamma: float
    alpha_max: Optional[float]
    burn_in_updates: int

    def __post_init__(self):
        # Both front ends spell these --codistill-*: the messages name the flag to change.
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule (--codistill-alpha-schedule) must be one of {SCHEDULES} "
                             f"(got {self.kind!r})")
        if not self.alpha0 >= 0 or math.isinf(self.alpha0):
            raise ValueError(f"alpha (--codistill-alpha) must be a finite number >= 0 (got {self.alpha0})")
        if not self.gamma > 0:
            raise ValueError(f"gamma (--codistill-gamma) must be > 0 (got {self.gamma})")
        if self.alpha_max is not None and not self.alpha_max >= 0:
            raise ValueError(f"alpha_max (--codistill-alpha-max) must be >= 0 (got {self.alpha_max})")
        if self.burn_in_updates < 0:
            raise ValueError(f"burn_in_updates (--codistill-burn-in-updates) must be >= 0 "
                             f"(got {self.burn_in_updates})")

    def __call__(self, epoch: int = 1, num_updates: int = 0, num_lr_decays: int = 0) -> float:
        """alpha at 1-based ``epoch`` after ``num_updates`` updates and ``num_lr_decays``."""
        if num_updates < self.burn_in_updates:
            return 0.0
        if self.kind == "constant":
            alpha = self.alpha0
        elif self.kind == "exponential":
            alpha = self.alpha0 * self.gamma ** (max(epoch, 1) - 1)
        else:
            alpha = self.alpha0 * self.gamma ** num_lr_decays
        if self.alpha_max is not None:
            alpha = min(alpha, self.alpha_max)
        return alpha
