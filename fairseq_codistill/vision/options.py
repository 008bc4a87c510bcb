"""Command-line flags of the vision trainer, the paper's presets, and their validation.

The ``--codistill-*`` flags are the NMT task's, defined once in ``fairseq_codistill/options.py``
(defaults, help texts, checks), so one recipe reads like the other.
"""
from __future__ import annotations

import argparse
import math
import os
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import torch

from fairseq_codistill import options as opts
from fairseq_codistill.exchange.peers import check_exchange_dir
from fairseq_codistill.vision.data import require_torchvision
from fairseq_codistill.vision.models import arch_error
from fairseq_codistill.vision.schedules import LR_SCHEDULES, scale_for_fraction

# Sodhani et al. 2020, sec. 4 (Goyal et al. 2017 based); 32 images per GPU, LR 0.1 per 256.
PRESETS = {
    # 16 GPUs x 32 = batch 512: LR warms up from 0.1 to 0.2 over 5 epochs.
    "goyal-allreduce": dict(epochs=90, warmup_epochs=5.0, lr_milestones=(30.0, 60.0, 80.0),
                            wd_schedule=(1e-4,)),
    # 2 models x 8 GPUs x 32: half the batch per model, so half the epochs for the same
    # number of updates per model, and the schedule halved with it.
    "goyal-codistill": dict(epochs=45, warmup_epochs=2.5, lr_milestones=(15.0, 30.0, 40.0),
                            wd_schedule=(1e-4,)),
    # Codistillation regularises: weight decay falls at the LR decays, which come later
    # because the training loss saturates later.
    "goyal-codistill-adjusted": dict(epochs=45, warmup_epochs=2.5, lr_milestones=(18.0, 38.0, 44.0),
                                     wd_schedule=(1e-4, 1e-5, 0.0)),
}
COMMON = dict(lr=0.1, batch_size=32, momentum=0.9, lr_schedule="step", lr_decay=0.1)
# The paper's ImageNet alpha: 1, constant (a step schedule did no better). The defaults in
# fairseq_codistill/options.py are the translation study's.
IMAGENET_ALPHA = dict(codistill_alpha=1.0, codistill_alpha_schedule="constant")
# The flags a resumed run must share with its checkpoint.
AMP_DTYPES = ("none", "bf16", "fp16")
RESUME_INVARIANTS = ("arch", "num_classes", "seed", "batch_size", "train_fraction", "codistill_id")


def float_list(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (got {text!r})")


def fraction(text: str) -> float:
    """``1/4`` or ``0.25``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a fraction like 1/4 or 0.25 (got {text!r})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fairseq-codistill-vision",
        description="ImageNet training with DistributedDataParallel inside each model and "
        "codistillation between models through weight snapshots (Sodhani et al. 2020). Run one "
        "torchrun per model; without --codistill-dir it is a plain all-reduce trainer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="ImageNet root with train/ and val/ in "
                   "ImageFolder layout (needs torchvision)")
    g.add_argument("--dummy", action="store_true", help="synthetic images instead of --data: "
                   "smoke runs, benchmarks, machines without torchvision")
    g.add_argument("--dummy-train-size", type=int, default=1281167, help="ImageNet's train size")
    g.add_argument("--dummy-val-size", type=int, default=50000, help="ImageNet's val size")
    g.add_argument("--num-classes", type=int, default=0,
                   help="output classes; 0: the class folders of --data, 1000 for --dummy")
    g.add_argument("--image-size", type=int, default=224, help="crop size; 224 is ImageNet's")
    g.add_argument("--train-fraction", type=fraction, default=1.0, metavar="1/K",
                   help="train on this fraction of the training set for K times the epochs "
                   "(--epochs, --warmup-epochs and --lr-milestones stretch with it), the "
                   "paper's overfitting study; the same subset for every model")
    g.add_argument("--workers", type=int, default=4, help="data-loading processes per GPU")

    g = p.add_argument_group("model and optimisation (defaults: goyal-allreduce)")
    g.add_argument("--arch", default="resnet50", help="a torchvision classifier (resnet50, "
                   "resnext101_32x8d ...) or a built-in small one (resnet8, resnet14, resnet20)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the paper's schedule; explicit "
                   "flags override it")
    g.add_argument("--epochs", type=int, help="epochs of the whole data set")
    g.add_argument("--batch-size", type=int, help="images per process (per GPU); Goyal et al. use 32")
    g.add_argument("--lr", type=float, help="LR per 256 images of global batch (linear scaling "
                   "rule) and the LR warm-up starts from")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="step: x --lr-decay at each of "
                   "--lr-milestones; cosine: to 0 at the last epoch")
    g.add_argument("--warmup-epochs", type=float, help="linear LR warm-up (Goyal et al.: 5)")
    g.add_argument("--lr-milestones", type=float_list, metavar="E1,E2,..",
                   help="epochs where the LR is multiplied by --lr-decay")
    g.add_argument("--lr-decay", type=float, help="LR factor at each milestone")
    g.add_argument("--wd-schedule", type=float_list, metavar="WD0,WD1,..",
                   help="weight decay, changing at each LR milestone; the last value holds "
                   "(one value: constant). The paper's codistill adjustment: 1e-4,1e-5,0")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--seed", type=int, default=0, help="initialisation and batch order; "
                   "each codistilled model adds its --codistill-id, so models differ")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if CUDA is there")
    p.set_defaults(**COMMON, **PRESETS["goyal-allreduce"])

    g = p.add_argument_group("speed")
    g.add_argument("--amp", choices=AMP_DTYPES, default="none", help="mixed precision: forward "
                   "passes under torch.autocast in this dtype, weights and optimizer in fp32; "
                   "fp16 adds a GradScaler. Peers run in it too (with --codistill-peer-dtype "
                   "auto). bf16 needs a GPU that supports it (Ampere or later) or a CPU with "
                   "fast bf16: `python -m fairseq_codistill.core.precision [--device cuda]` says")
    g.add_argument("--channels-last", action="store_true", help="NHWC layout for the model, "
                   "its peers and the images: the layout tensor cores and oneDNN convolve fastest")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (not its "
                   "peers): faster updates after a compilation of minutes at the start")

    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--save-dir", default="checkpoints", help="checkpoint_last.pt, "
                   "checkpoint_best.pt and metrics.jsonl (one JSON line per epoch) of this model")
    g.add_argument("--resume", default="", metavar="CKPT", help="checkpoint to continue from; "
                   "empty: SAVE_DIR/checkpoint_last.pt when it exists")
    g.add_argument("--print-freq", type=int, default=100, help="updates between progress lines; 0: none")
    g.add_argument("--evaluate", metavar="CKPT", default="", help="no training: validate the "
                   "model of this checkpoint (built from the config inside it) and print JSON")

    g = p.add_argument_group("codistillation (the NMT task's flags, fairseq_codistill/options.py)")
    opts.add_all(g, extra_help={
        opts.DIR: "; none: a plain all-reduce trainer",
        opts.ALPHA: " (here: 1, constant, the paper's ImageNet choice)",
        opts.ALPHA_SCHEDULE: " (here: constant)",
    })
    p.set_defaults(**IMAGENET_ALPHA)  # after the options: it replaces their defaults
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse, apply ``--preset`` under the explicit flags, validate, and stretch the
    schedule for ``--train-fraction``. Bad values exit with a message naming the flag."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    args = parser.parse_args(argv)
    try:
        validate(args)
    except ValueError as e:  # our own checks: the message alone, not the long usage
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.train_fraction < 1:
        args.epochs, args.warmup_epochs, args.lr_milestones = scale_for_fraction(
            args.epochs, args.warmup_epochs, args.lr_milestones, args.train_fraction)
    if args.amp != "none" and args.codistill_peer_dtype == "auto":
        args.codistill_peer_dtype = args.amp  # peers in the model's precision
    return args


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate(args) -> None:
    """Reject bad values before anything is built, naming the flag to change."""
    _check(bool(args.data) != args.dummy, "give exactly one of --data DIR and --dummy"
           if args.data else "--data DIR is required (or --dummy for synthetic images)")
    if args.data:
        require_torchvision(args.data)
    error = None if args.evaluate else arch_error(args.arch)  # --evaluate: the checkpoint's
    _check(error is None, error or "")
    for flag in ("resume", "evaluate"):
        path = getattr(args, flag)
        _check(not path or os.path.isfile(path), f"--{flag} {path}: no such checkpoint file")
    for flag in ("epochs", "batch_size", "image_size", "dummy_train_size", "dummy_val_size"):
        value = getattr(args, flag)
        _check(value > 0, f"--{flag.replace('_', '-')} must be > 0 (got {value})")
    _check(args.num_classes >= 0, f"--num-classes must be >= 0 (got {args.num_classes})")
    _check(args.workers >= 0, f"--workers must be >= 0 (got {args.workers})")
    _check(args.print_freq >= 0, f"--print-freq must be >= 0 (got {args.print_freq})")
    _check(args.lr > 0 and math.isfinite(args.lr), f"--lr must be > 0 (got {args.lr})")
    _check(0 < args.lr_decay <= 1, f"--lr-decay must be in (0, 1] (got {args.lr_decay})")
    _check(0 <= args.momentum < 1, f"--momentum must be in [0, 1) (got {args.momentum})")
    _check(0 < args.train_fraction <= 1,
           f"--train-fraction must be in (0, 1], like 1/4 (got {args.train_fraction})")
    _check(0 <= args.warmup_epochs < args.epochs,
           f"--warmup-epochs must be in [0, --epochs={args.epochs}) (got {args.warmup_epochs})")
    ms = list(args.lr_milestones)
    _check(ms == sorted(set(ms)), f"--lr-milestones must be increasing (got {_join(ms)})")
    _check(all(args.warmup_epochs <= m < args.epochs for m in ms),
           f"--lr-milestones must lie in [--warmup-epochs={args.warmup_epochs:g}, "
           f"--epochs={args.epochs}) (got {_join(ms)})")
    wd = list(args.wd_schedule)
    _check(bool(wd) and all(w >= 0 for w in wd),
           f"--wd-schedule must be one or more values >= 0 (got {_join(wd)})")
    _check(len(wd) <= len(ms) + 1, f"--wd-schedule has {len(wd)} values but there are only "
           f"{len(ms)} --lr-milestones to change them at (got {_join(wd)})")
    if args.preset and args.preset.startswith("goyal-codistill"):
        _check(bool(args.codistill_dir), f"--preset {args.preset} needs --codistill-dir "
               "(and --codistill-id); use --preset goyal-allreduce for a single model")
    opts.alpha_schedule(args)  # checks its --codistill-* flags
    opts.check_penalty(args)
    _check(args.amp != "bf16" or args.cpu or not torch.cuda.is_available()
           or torch.cuda.is_bf16_supported(),
           "--amp bf16: this GPU does not support bf16; use --amp fp16")
    _check(args.codistill_method == "distill", f"--codistill-method {args.codistill_method}: the "
           "vision trainer codistills (distill); LocalSGD and DiLoCo are in the NMT task")
    if args.codistill_dir:
        opts.exchange_config(args).validate()
        check_exchange_dir(args.codistill_dir)


def _join(values: List[float]) -> str:
    return ",".join(f"{v:g}" for v in values)
