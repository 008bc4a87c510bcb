"""Peak memory of a worker with a peer, against one without.

A peer should cost its weights in the training dtype and the activations of one
no-grad forward pass, nothing more: no gradients, no optimizer state. Three fresh
processes, one after the other, on the same model and batch:

    without   updates with cross_entropy and no peer
    with      updates with codistill_ce (alpha 1) and one peer
    forward   the peer alone: its weights, then one no-grad forward (its activations)

Peak memory is the peak resident set (VmHWM) on a CPU and
``torch.cuda.max_memory_allocated`` on a GPU. Prints

    ratio peer_cost = (peak_with - peak_without) / (peer weights + no-grad forward peak)

1.0 is the floor. On a CPU the children run with MALLOC_MMAP_THRESHOLD_=131072 (unless
set already) so that the resident set follows the live tensors instead of what glibc
keeps after a free; expect a few percent of noise either way.

    python benchmarks/memory.py              # IWSLT transformer, 4096 tokens
    python benchmarks/memory.py --quick      # 512 tokens: under a minute
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import common

KINDS = ("without", "with", "forward")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(p)
    p.add_argument("--updates", type=int, default=2,
                   help="updates per worker; the first allocates the optimizer state")
    p.add_argument("--quick", action="store_true", help="--max-tokens 512: under a minute on a CPU")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    common.add_machine_args(p, clock=False)
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens = 512
    return args


# -- inside one measured process -----------------------------------------------------


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class Peak:
    """Peak memory since ``reset``, in bytes: GPU allocations, or the CPU resident set."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return rss_kb("VmRSS") * 1024

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)

    def peak(self) -> int:
        common.synchronize(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return rss_kb("VmHWM") * 1024


def child(args) -> dict:
    device = common.setup_device(args)
    meter = Peak(device)
    cfg, task = common.fairseq_setup(common.model_flags(args), args.src_vocab, args.tgt_vocab)
    dtype = common.train_dtype(cfg)
    sample = common.make_batch(task, args.max_tokens, args.seq_len, device)
    out = {}
    if args.child == "forward":
        peer = common.make_peer(task, cfg, dtype, device, args.codistill_peer_dtype)
        out["weights"] = common.state_bytes(peer)
        for _ in range(2):  # the first forward also pays one-off library start-up memory
            meter.reset()
            before = meter.now()
            with torch.inference_mode():
                peer(**sample["net_input"])
            out["forward_peak"] = meter.peak() - before
        return out
    meter.reset()
    model = common.prepare(task.build_model(cfg.model), dtype, device)
    peers = [common.make_peer(task, cfg, dtype, device, args.codistill_peer_dtype)] if args.child == "with" else []
    criterion = (common.codistill_criterion(task, peers, alpha=1.0) if peers
                 else task.build_criterion(cfg.criterion))
    optimizer = common.build_optimizer(cfg, model)
    for i in range(args.updates):
        common.update(task, model, criterion, optimizer, sample, update_num=i)
    out["peak"] = meter.peak()
    held = {id(p) for p in optimizer.params} | {id(p) for p in getattr(optimizer, "fp16_params", [])}
    out["peer_in_optimizer"] = sum(id(p) in held for peer in peers for p in peer.parameters())
    out["peer_grads"] = sum(p.grad is not None for peer in peers for p in peer.parameters())
    return out


# -- the parent ----------------------------------------------------------------------


def run_child(kind: str, argv) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", kind]
    # A fixed mmap threshold makes glibc return every freed block of 128 KB or more to
    # the system at once, so the resident set follows the live tensors; by default it
    # raises the threshold as it goes and keeps freed memory, which RSS counts.
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    device = common.setup_device(args)
    r = {kind: run_child(kind, argv) for kind in KINDS}
    delta = r["with"]["peak"] - r["without"]["peak"]
    expected = r["forward"]["weights"] + r["forward"]["forward_peak"]
    what = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"
    print(f"# memory: {args.arch}, {args.max_tokens} tokens/batch, {args.device}, "
          f"{'fp16' if args.fp16 else 'bf16' if args.bf16 else 'fp32'}, peer dtype "
          f"{args.codistill_peer_dtype}, {args.updates} updates; {what}")
    print(common.machine_line(device, args))
    print(f"size  worker without peer    {common.fmt_bytes(r['without']['peak']):>10s}")
    print(f"size  worker with peer       {common.fmt_bytes(r['with']['peak']):>10s}   "
          f"(+{common.fmt_bytes(delta)})")
    print(f"size  peer weights           {common.fmt_bytes(r['forward']['weights']):>10s}")
    print(f"size  peer no-grad forward   {common.fmt_bytes(r['forward']['forward_peak']):>10s}   (peak above its weights)")
    w = r["with"]
    print(f"check peer parameters with a gradient: {w['peer_grads']}; "
          f"in the optimizer: {w['peer_in_optimizer']}")
    print(common.ratio_line("peer_cost", delta / expected,
                            "(peak with peer - peak without) / (peer weights + no-grad forward peak)",
                            "<= 1.05 (nothing more, within noise)", delta / expected <= 1.05))
    print(common.ratio_line("peer_cost_over_weights", delta / r["forward"]["weights"],
                            "(peak with peer - peak without) / peer weights"))


if __name__ == "__main__":
    main()
