"""ImageNet training, one model per torchrun: DistributedDataParallel inside the model,
codistillation between models through weight snapshots (``--codistill-dir``).

    torchrun --standalone --nproc-per-node 8 -m fairseq_codistill.vision \\
        --data /path/to/imagenet --preset goyal-allreduce --save-dir runs/allreduce

Shaped after pytorch/examples' imagenet/main.py: ``train`` one epoch, ``validate``,
``accuracy``, ``save_checkpoint``. Plain PyTorch; no fairseq import.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fairseq_codistill.exchange.storage import atomic_write
from fairseq_codistill.codistillation import Codistillation
from fairseq_codistill.vision.codistill import codistillation
from fairseq_codistill.vision.data import build_datasets, train_loader, val_loader
from fairseq_codistill.vision.models import build_model
from fairseq_codistill.vision.options import RESUME_INVARIANTS, parse_args
from fairseq_codistill.vision.schedules import LRSchedule, WeightDecaySchedule, num_decays, peak_lr

logger = logging.getLogger("fairseq_codistill.vision")
CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    """Where training stands; saved in the checkpoint."""

    epoch: int = 0  # epochs completed
    num_updates: int = 0
    best_acc1: float = 0.0


@dataclass(frozen=True)
class Schedules:
    """The schedules of one run, in float epochs done."""

    lr: LRSchedule
    wd: WeightDecaySchedule

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> Tuple[float, float]:
        lr, wd = self.lr(epoch), self.wd(epoch)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = lr, wd
        return lr, wd


@dataclass
class Compute:
    """How the tensors of an update are computed: --amp (autocast, and a GradScaler for
    fp16) and --channels-last (NHWC images; the model is converted at setup)."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # None: fp32 throughout
    scaler: Optional[torch.amp.GradScaler] = None
    memory_format: torch.memory_format = torch.contiguous_format

    @classmethod
    def from_args(cls, args, device: torch.device) -> "Compute":
        amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        return cls(device, amp_dtype, scaler, layout)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def backward_and_step(self, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()


def schedules_from_args(args, world: int) -> Schedules:
    milestones = tuple(args.lr_milestones)
    return Schedules(
        lr=LRSchedule(base_lr=args.lr, peak_lr=peak_lr(args.lr, args.batch_size * world),
                      warmup_epochs=args.warmup_epochs, kind=args.lr_schedule,
                      milestones=milestones, decay=args.lr_decay, total_epochs=args.epochs),
        wd=WeightDecaySchedule(values=tuple(args.wd_schedule), milestones=milestones))


# -- one epoch -----------------------------------------------------------------------


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list:
    """Correct predictions among the top k, for each k: counts (not %), so that batches
    and ranks add up exactly. k is capped at the number of classes."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target[:, None])  # (B, maxk)
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


def update(model: nn.Module, images: torch.Tensor, target: torch.Tensor, optimizer,
           codistill: Optional[Codistillation], alpha: float, compute: Compute):
    """One SGD step on cross-entropy + alpha * penalty; (loss, penalty or None, logits), detached.
    The peers' forward runs under the same autocast as the model's."""
    with compute.autocast():
        output = model(images)  # (B, C)
        loss = F.cross_entropy(output, target)
        # D averaged over the peers and over the batch; None without a peer. A peer runs in
        # its own dtype (--codistill-peer-dtype), autocast, when on, casting again per op.
        penalty = (codistill.penalty(output, lambda peer: peer(images))  # (B, C) each
                   if alpha > 0 and codistill.peers() else None)
    total = loss if penalty is None else loss + alpha * penalty
    optimizer.zero_grad(set_to_none=True)
    compute.backward_and_step(total, optimizer)
    return loss.detach(), None if penalty is None else penalty.detach(), output.detach()


def train(loader, model: nn.Module, optimizer, schedules: Schedules, codistill: Optional[Codistillation],
          progress: Progress, compute: Compute, print_freq: int) -> Dict[str, float]:
    """One epoch of updates; the epoch's training metrics, summed over the ranks."""
    model.train()
    per_epoch = len(loader)
    # loss * images, codistill loss, codistilled batches, top-1 hits, images
    sums = torch.zeros(5, dtype=torch.float64, device=compute.device)
    lr = wd = alpha = 0.0
    start = time.time()
    for i, (images, target) in enumerate(loader):
        epoch_f = progress.num_updates / per_epoch
        lr, wd = schedules.apply(optimizer, epoch_f)
        images = compute.images(images)
        target = target.to(compute.device, non_blocking=True)
        if codistill is not None:  # publish / swap peers
            codistill.step(progress.num_updates, epoch=progress.epoch + 1,
                           num_lr_decays=num_decays(epoch_f, schedules.lr.milestones))
            alpha = codistill.alpha
        loss, penalty, output = update(model, images, target, optimizer, codistill, alpha, compute)
        progress.num_updates += 1
        zero = loss.new_zeros(())
        sums += torch.stack([loss * target.shape[0], zero if penalty is None else penalty,
                             zero + (penalty is not None), accuracy(output, target)[0].to(zero),
                             zero + target.shape[0]]).double()
        if print_freq and (i + 1) % print_freq == 0:
            logger.info("epoch %d [%d/%d] loss %.4f codistill %s alpha %.3g lr %.4g (%.3fs/update)",
                        progress.epoch + 1, i + 1, per_epoch, loss.item(),
                        "-" if penalty is None else f"{penalty.item():.4f}", alpha, lr,
                        (time.time() - start) / (i + 1))
    loss_sum, cd_sum, cd_batches, hits, n = all_reduce_sum(sums).tolist()
    return {
        "train_loss": loss_sum / max(n, 1),
        "codistill_loss": cd_sum / cd_batches if cd_batches else None,
        "train_acc1": 100 * hits / max(n, 1),
        "alpha": alpha, "lr": lr, "wd": wd,
    }


def validate(loader, model: nn.Module, compute: Compute) -> Dict[str, float]:
    """Plain cross-entropy and top-1/top-5 on the whole validation set (all ranks)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=compute.device)  # loss sum, top-1, top-5, images
    with torch.inference_mode():
        for images, target in loader:
            images = compute.images(images)
            target = target.to(compute.device, non_blocking=True)
            with compute.autocast():
                output = model(images)  # (B, C)
            loss = F.cross_entropy(output.float(), target, reduction="sum")
            top1, top5 = accuracy(output, target, topk=(1, 5))
            sums += torch.stack([loss, top1.to(loss.dtype), top5.to(loss.dtype),
                                 loss.new_tensor(float(images.shape[0]))]).double()
    loss_sum, top1, top5, n = all_reduce_sum(sums).tolist()
    n = max(n, 1)
    return {"val_loss": loss_sum / n, "val_acc1": 100 * top1 / n, "val_acc5": 100 * top5 / n}


def param_dist(model: nn.Module, init: Dict[str, torch.Tensor]) -> float:
    """L2 distance of the weights from their initial values (the paper's Fig. 3)."""
    total = 0.0
    for name, p in model.named_parameters():
        total += (p.detach().float().cpu() - init[name]).pow(2).sum().item()
    return total ** 0.5


# -- checkpoints and metrics -----------------------------------------------------------


def save_checkpoint(state: dict, is_best: bool, save_dir: Path) -> None:
    """checkpoint_last.pt, atomically (a crash leaves the previous one), and a copy as
    checkpoint_best.pt when the validation top-1 is the best so far."""
    last = save_dir / "checkpoint_last.pt"
    atomic_write(last, lambda f: torch.save(state, f))
    if is_best:
        with open(last, "rb") as src:
            atomic_write(save_dir / "checkpoint_best.pt", lambda f: shutil.copyfileobj(src, f))


def checkpoint_state(args, model: nn.Module, optimizer, progress: Progress, num_classes: int,
                     codistill: Optional[Codistillation], compute: Compute) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        # Enough to rebuild the model without the command line (nanoGPT style).
        "model_config": {"arch": args.arch, "num_classes": num_classes,
                         "image_size": args.image_size},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": compute.scaler.state_dict() if compute.scaler is not None else None,
        "progress": vars(progress).copy(),
        "args": vars(args).copy(),
        "exchange": codistill.state_dict() if codistill is not None else None,
        "rng": torch.get_rng_state(),
    }


def model_from_checkpoint(path: str) -> Tuple[nn.Module, dict]:
    """The trained model of a checkpoint, built from the config inside it; and the config."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = state["model_config"]
    model = build_model(config["arch"], config["num_classes"])
    model.load_state_dict(state["model"])
    return model, config


def load_checkpoint(path: str, args, model: nn.Module, optimizer, num_classes: int,
                    updates_per_epoch: int, compute: Compute) -> Tuple[Progress, Optional[dict]]:
    """Restore model, optimizer and RNG in place; (progress, exchange state). The flags
    the run depends on must match the checkpoint's (a mismatch names the flag)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a checkpoint of this trainer (version "
                         f"{state.get('version')}, expected {CHECKPOINT_VERSION})")
    saved = dict(state["args"], num_classes=state["model_config"]["num_classes"])
    ours = dict(vars(args), num_classes=num_classes)
    for key in RESUME_INVARIANTS:
        if saved.get(key) != ours.get(key):
            raise ValueError(f"--{key.replace('_', '-')} is {ours.get(key)} but {path} was trained "
                             f"with {saved.get(key)}: pass the same, or another --save-dir")
    progress = Progress(**state["progress"])
    if progress.num_updates != progress.epoch * updates_per_epoch:
        raise ValueError(f"{path} is at update {progress.num_updates} after {progress.epoch} "
                         f"epochs, but this run makes {updates_per_epoch} updates per epoch: keep "
                         "--batch-size, the number of processes and the data the same")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if compute.scaler is not None and state.get("scaler"):  # the fp16 loss scale reached
        compute.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    logger.info("resumed from %s: epoch %d, update %d", path, progress.epoch, progress.num_updates)
    return progress, state.get("exchange")


def write_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def drop_metrics_after(path: Path, epoch: int) -> None:
    """On resume: forget epochs logged after the checkpoint (a crash between the two)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if _epoch_of(ln) <= epoch]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(ln + "\n" for ln in kept).encode()))


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):  # a line cut short by the crash
        return float("inf")


# -- processes and devices --------------------------------------------------------------


def setup_distributed(cpu: bool) -> Tuple[int, int, torch.device]:
    """(rank, world size, device) of this process in its model's torchrun job."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    use_cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def configure_logging(rank: int, model_id: int) -> None:
    name = f"model {model_id}" if model_id >= 0 else "vision"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s | {name} | %(levelname)s | %(message)s")


# -- the run -------------------------------------------------------------------------


@dataclass
class Job:
    """Everything one process of one model trains with."""

    args: argparse.Namespace
    rank: int
    device: torch.device
    model: nn.Module  # unwrapped: checkpoints, snapshots, param_dist
    ddp: nn.Module  # what trains: the DDP wrapper, or the model itself in one process; compiled
    optimizer: torch.optim.Optimizer
    compute: Compute
    train_loader: DataLoader
    val_loader: DataLoader
    schedules: Schedules
    codistill: Optional[Codistillation]
    num_classes: int
    init: Optional[Dict[str, torch.Tensor]]  # initial weights, on rank 0
    progress: Progress
    save_dir: Path


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.cpu)
    configure_logging(rank, args.codistill_id)
    try:
        if args.evaluate:
            evaluate(args, rank, world, device)
            return
        try:
            job = setup(args, rank, world, device)
        except ValueError as e:  # the data or the checkpoint do not fit the flags
            sys.stderr.write(f"fairseq-codistill-vision: error: {e}\n")
            raise SystemExit(2)
        fit(job)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def setup(args, rank: int, world: int, device: torch.device) -> Job:
    # Each model its own initialisation and batch order; resume rebuilds the same
    # initial weights, so param_dist keeps measuring from the true start.
    seed = args.seed + max(args.codistill_id, 0)
    torch.manual_seed(seed)
    train_set, val_set, num_classes = build_datasets(args)
    model = build_model(args.arch, num_classes)  # on the CPU: the same weights anywhere
    init = {n: p.detach().float().clone() for n, p in model.named_parameters()} if rank == 0 else None
    compute = Compute.from_args(args, device)
    model.to(device, memory_format=compute.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd_schedule[0])
    pin = device.type == "cuda"
    train_data = train_loader(train_set, args.batch_size, args.workers, seed, rank, world, pin)
    val_data = val_loader(val_set, args.batch_size, args.workers, rank, world, pin)
    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    resume = args.resume or str(save_dir / "checkpoint_last.pt")
    progress, exchange_state = Progress(), None
    if os.path.isfile(resume):
        progress, exchange_state = load_checkpoint(resume, args, model, optimizer, num_classes,
                                                   len(train_data), compute)
        if rank == 0:
            drop_metrics_after(save_dir / "metrics.jsonl", progress.epoch)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    if args.compile:
        ddp = torch.compile(ddp)
    codistill = None
    if args.codistill_dir:
        codistill = codistillation(args, model, num_classes)
        if exchange_state:
            codistill.load_state_dict(exchange_state)
    logger.info("%s: %d classes, %d processes x %d images, %d updates per epoch, epochs %d..%d",
                args.arch, num_classes, world, args.batch_size, len(train_data),
                progress.epoch + 1, args.epochs)
    return Job(args, rank, device, model, ddp, optimizer, compute, train_data, val_data,
               schedules_from_args(args, world), codistill, num_classes, init, progress, save_dir)


def evaluate(args, rank: int, world: int, device: torch.device) -> None:
    """``--evaluate CKPT``: the validation metrics of a checkpoint, as one JSON line."""
    model, config = model_from_checkpoint(args.evaluate)
    _, val_set, _ = build_datasets(argparse.Namespace(**{**vars(args), **config}))
    loader = val_loader(val_set, args.batch_size, args.workers, rank, world,
                        pin_memory=device.type == "cuda")
    compute = Compute.from_args(args, device)
    metrics = validate(loader, model.to(device, memory_format=compute.memory_format), compute)
    if rank == 0:
        print(json.dumps({"checkpoint": args.evaluate, **config, **metrics}), flush=True)


def fit(job: Job) -> None:
    """Train from ``job.progress`` to ``--epochs``; validate and checkpoint every epoch."""
    args, progress = job.args, job.progress
    try:
        for epoch in range(progress.epoch, args.epochs):
            job.train_loader.sampler.set_epoch(epoch)
            start = time.time()
            record = train(job.train_loader, job.ddp, job.optimizer, job.schedules, job.codistill,
                           progress, job.compute, args.print_freq)
            record.update(validate(job.val_loader, job.ddp, job.compute))
            progress.epoch = epoch + 1
            is_best = record["val_acc1"] > progress.best_acc1
            progress.best_acc1 = max(progress.best_acc1, record["val_acc1"])
            if job.rank == 0:
                record.update(epoch=progress.epoch, updates=progress.num_updates,
                              param_dist=param_dist(job.model, job.init), seconds=time.time() - start,
                              **(job.codistill.metrics() if job.codistill is not None else {}))
                save_checkpoint(checkpoint_state(args, job.model, job.optimizer, progress, job.num_classes,
                                                 job.codistill, job.compute), is_best, job.save_dir)
                write_metrics(job.save_dir / "metrics.jsonl", record)
                logger.info("epoch %d: %s", progress.epoch, json.dumps(record))
    finally:
        if job.codistill is not None:
            job.codistill.close()


if __name__ == "__main__":
    main()
