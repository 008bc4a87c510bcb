"""The ImageNet LR and weight-decay schedules give the paper's values (Sodhani et al.
2020, sec. 4, after Goyal et al. 2017), worked out by hand in the comments."""
import math

import pytest

from fairseq_codistill.vision.schedules import (
    LRSchedule,
    WeightDecaySchedule,
    num_decays,
    peak_lr,
    scale_for_fraction,
)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def test_peak_lr_is_the_linear_scaling_rule():
    assert close(peak_lr(0.1, 256), 0.1)
    assert close(peak_lr(0.1, 512), 0.2)  # all-reduce: 16 GPUs x 32
    assert close(peak_lr(0.1, 8192), 3.2)  # Goyal et al.'s 8k batch: 0.1 * 32


def test_num_decays_counts_milestones_passed():
    ms = (30, 60, 80)
    assert [num_decays(e, ms) for e in (0, 29.999, 30, 59.9, 60, 80, 89)] == [0, 0, 1, 1, 2, 3, 3]


def test_allreduce_step_schedule():
    # batch 512: warm-up from 0.1 to 0.1 * 512/256 = 0.2 over 5 epochs, x0.1 at 30, 60, 80.
    lr = LRSchedule(base_lr=0.1, peak_lr=0.2, warmup_epochs=5, milestones=(30, 60, 80))
    assert close(lr(0), 0.1)
    assert close(lr(2.5), 0.15)  # half-way: 0.1 + (0.2 - 0.1) * 2.5/5
    assert close(lr(4.9), 0.198)  # 0.1 + 0.1 * 4.9/5
    assert close(lr(5), 0.2)  # warm-up ends
    assert close(lr(29.99), 0.2)
    assert close(lr(30), 0.02)  # 0.2 * 0.1
    assert close(lr(60), 0.002)  # 0.2 * 0.1^2
    assert close(lr(80), 0.0002)  # 0.2 * 0.1^3
    assert close(lr(89.99), 0.0002)


def test_codistill_schedules_half_and_shifted():
    # Each model has batch 256 (8 GPUs x 32): the peak is 0.1 * 256/256 = 0.1, so the
    # 2.5-epoch warm-up is flat at 0.1.
    lr = LRSchedule(base_lr=0.1, peak_lr=0.1, warmup_epochs=2.5, milestones=(15, 30, 40))
    assert close(lr(1.25), 0.1)
    assert close(lr(14.99), 0.1)
    assert close(lr(15), 0.01)
    assert close(lr(30), 0.001)
    assert close(lr(40), 0.0001)
    # Adjusted: the decays move to 18, 38, 44; at 15 nothing happens yet.
    shifted = LRSchedule(base_lr=0.1, peak_lr=0.1, warmup_epochs=2.5, milestones=(18, 38, 44))
    assert close(shifted(15), 0.1)
    assert close(shifted(18), 0.01)
    assert close(shifted(37.9), 0.01)
    assert close(shifted(38), 0.001)
    assert close(shifted(44), 0.0001)


def test_cosine_schedule():
    # After a 5-epoch warm-up, 0.2 * (1 + cos(pi * (e - 5) / 85)) / 2.
    lr = LRSchedule(base_lr=0.1, peak_lr=0.2, warmup_epochs=5, kind="cosine", total_epochs=90)
    assert close(lr(2.5), 0.15)  # the same warm-up
    assert close(lr(5), 0.2)  # cos(0) = 1
    assert close(lr(47.5), 0.1)  # half-way: cos(pi/2) = 0
    assert close(lr(90), 0.0)  # cos(pi) = -1
    assert lr(100) == lr(90)  # no rising again past the end


def test_adjusted_weight_decay_falls_at_the_lr_decays():
    # 1e-4 until the first decay (18), 1e-5 until the second (38), then 0 (also after 44).
    wd = WeightDecaySchedule(values=(1e-4, 1e-5, 0.0), milestones=(18, 38, 44))
    assert [wd(e) for e in (0, 17.99, 18, 37.99, 38, 44, 45)] == [1e-4, 1e-4, 1e-5, 1e-5, 0.0, 0.0, 0.0]


def test_constant_weight_decay():
    wd = WeightDecaySchedule(values=(1e-4,), milestones=(30, 60, 80))
    assert {wd(e) for e in (0, 30, 60, 89)} == {1e-4}


@pytest.mark.parametrize("fraction, k", [(0.5, 2), (0.25, 4)])
def test_subset_training_stretches_the_schedule(fraction, k):
    # 1/k of the data for k times the epochs: 45 -> 45k epochs, 2.5 -> 2.5k, 18 -> 18k ...
    epochs, warmup, ms = scale_for_fraction(45, 2.5, (18, 38, 44), fraction)
    assert (epochs, warmup, ms) == (45 * k, 2.5 * k, (18.0 * k, 38.0 * k, 44.0 * k))
