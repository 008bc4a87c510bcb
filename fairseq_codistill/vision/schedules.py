"""Learning-rate and weight-decay schedules of the ImageNet recipes, as pure functions
of training progress.

Progress is measured in epochs as a float (``updates done / updates per epoch``), so
the LR changes every update, as in Goyal et al. 2017 ("Accurate, Large Minibatch SGD"):

- linear warm-up from ``base_lr`` to ``peak_lr = base_lr * batch / 256`` over the first
  ``warmup_epochs``;
- then ``step``: ``peak_lr * decay ** (milestones passed)``, or ``cosine``: half a
  cosine from ``peak_lr`` to 0 between the end of warm-up and the last epoch.

Weight decay steps at the same milestones (Sodhani et al. 2020: 1e-4 until the first
LR decay, 1e-5 until the second, then 0, when codistilling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

LR_SCHEDULES = ("step", "cosine")
REFERENCE_BATCH = 256  # Goyal et al.'s linear scaling rule: lr = base_lr * batch / 256


def num_decays(epoch: float, milestones: Sequence[float]) -> int:
    """How many LR decays happened by ``epoch`` (float epochs done): milestones passed."""
    return sum(1 for m in milestones if epoch >= m)


def peak_lr(base_lr: float, batch_size: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """The LR after warm-up for a global batch of ``batch_size`` (linear scaling rule)."""
    return base_lr * batch_size / reference_batch


@dataclass(frozen=True)
class LRSchedule:
    """The LR at ``epoch`` (float epochs done, from 0)."""

    base_lr: float
    peak_lr: float
    warmup_epochs: float = 0.0
    kind: str = "step"
    milestones: Tuple[float, ...] = ()
    decay: float = 0.1
    total_epochs: float = 90.0  # the cosine's end

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.base_lr + (self.peak_lr - self.base_lr) * epoch / self.warmup_epochs
        if self.kind == "step":
            return self.peak_lr * self.decay ** num_decays(epoch, self.milestones)
        span = max(self.total_epochs - self.warmup_epochs, 1e-12)
        done = min(max(epoch - self.warmup_epochs, 0.0) / span, 1.0)
        return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * done))


@dataclass(frozen=True)
class WeightDecaySchedule:
    """``values[i]`` after the i-th milestone; the last value holds for the rest of training.

    One value is a constant weight decay (the all-reduce recipe).
    """

    values: Tuple[float, ...]
    milestones: Tuple[float, ...] = ()

    def __call__(self, epoch: float) -> float:
        return self.values[min(num_decays(epoch, self.milestones), len(self.values) - 1)]


def scale_for_fraction(epochs: int, warmup_epochs: float, milestones: Sequence[float],
                       fraction: float) -> Tuple[int, float, Tuple[float, ...]]:
    """Stretch a schedule given in epochs of the whole data set to epochs of a subset.

    Training on 1/k of the data for k times the epochs keeps the number of updates,
    and so the schedule in updates, unchanged (the paper's overfitting study).
    """
    k = 1.0 / fraction
    return round(epochs * k), warmup_epochs * k, tuple(m * k for m in milestones)
