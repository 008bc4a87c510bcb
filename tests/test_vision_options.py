"""The vision trainer's presets: the paper's values, overridden by explicit flags."""
import pytest

from fairseq_codistill.vision.options import parse_args
from fairseq_codistill.vision.train import schedules_from_args


def args_of(tmp_path, *flags):
    return parse_args(["--dummy", "--arch", "resnet8", "--codistill-dir", str(tmp_path),
                       "--codistill-id", "0", *flags])


def test_defaults_are_the_allreduce_recipe(tmp_path):
    a = parse_args(["--dummy", "--arch", "resnet8"])
    assert (a.epochs, a.warmup_epochs, a.lr_milestones, a.wd_schedule) == (90, 5.0, (30, 60, 80), (1e-4,))
    assert (a.lr, a.batch_size, a.momentum, a.lr_schedule) == (0.1, 32, 0.9, "step")
    assert a.codistill_dir == "" and a.codistill_interval == 2500
    # the paper's ImageNet alpha, not the translation study's 0.1 x1.1 per epoch
    assert (a.codistill_alpha, a.codistill_alpha_schedule) == (1.0, "constant")
    b = parse_args(["--dummy", "--arch", "resnet8", "--codistill-alpha", "0.5"])
    assert (b.codistill_alpha, b.codistill_alpha_schedule) == (0.5, "constant")


@pytest.mark.parametrize("preset, epochs, warmup, milestones, wd", [
    ("goyal-allreduce", 90, 5.0, (30, 60, 80), (1e-4,)),
    ("goyal-codistill", 45, 2.5, (15, 30, 40), (1e-4,)),
    ("goyal-codistill-adjusted", 45, 2.5, (18, 38, 44), (1e-4, 1e-5, 0.0)),
])
def test_presets(tmp_path, preset, epochs, warmup, milestones, wd):
    a = args_of(tmp_path, "--preset", preset)
    assert (a.epochs, a.warmup_epochs, a.lr_milestones, a.wd_schedule) == (epochs, warmup, milestones, wd)


def test_explicit_flags_override_the_preset_in_any_order(tmp_path):
    a = args_of(tmp_path, "--lr-milestones", "20,40", "--preset", "goyal-codistill-adjusted", "--epochs", "50")
    assert (a.epochs, a.warmup_epochs, a.lr_milestones, a.wd_schedule) == (50, 2.5, (20, 40), (1e-4, 1e-5, 0.0))


def test_preset_with_a_train_fraction_stretches_the_schedule(tmp_path):
    # 1/4 of the data: 45 -> 180 epochs, warm-up 2.5 -> 10, decays 18, 38, 44 -> 72, 152, 176.
    a = args_of(tmp_path, "--preset", "goyal-codistill-adjusted", "--train-fraction", "1/4")
    assert (a.train_fraction, a.epochs, a.warmup_epochs, a.lr_milestones) == (0.25, 180, 10.0, (72, 152, 176))


def test_schedules_from_the_presets_on_16_gpus(tmp_path):
    # All-reduce, 16 processes x 32 = 512: LR 0.1 -> 0.2 over 5 epochs, 0.02 from epoch 30.
    h = schedules_from_args(parse_args(["--dummy", "--arch", "resnet8", "--preset", "goyal-allreduce"]), world=16)
    assert [h.lr(e) for e in (0, 5, 30)] == pytest.approx([0.1, 0.2, 0.02])
    # Each codistilled model on 8 processes x 32 = 256: LR stays 0.1 until the shifted
    # decay at 18; weight decay 1e-4, 1e-5 from 18, 0 from 38.
    h = schedules_from_args(args_of(tmp_path, "--preset", "goyal-codistill-adjusted"), world=8)
    assert [h.lr(e) for e in (0, 17.9, 18, 38, 44)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001])
    assert [h.wd(e) for e in (0, 18, 38)] == [1e-4, 1e-5, 0.0]


def test_help_lists_the_speed_flags(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--amp {none,bf16,fp16}", "--channels-last", "--compile", "--codistill-peer-dtype"):
        assert flag in out


@pytest.mark.parametrize("flags, peer_dtype", [
    ([], "auto"),                                             # the exchange decides per device
    (["--amp", "bf16"], "bf16"),                              # peers in the model's precision
    (["--amp", "fp16"], "fp16"),
    (["--amp", "bf16", "--codistill-peer-dtype", "same"], "same"),  # an explicit choice stays
])
def test_amp_sets_the_peers_precision_unless_given(flags, peer_dtype):
    assert parse_args(["--dummy", "--arch", "resnet8", *flags]).codistill_peer_dtype == peer_dtype
