"""What one update costs with the codistillation penalty, against plain cross-entropy.

On one model and one batch, interleaved rounds time four things:

    cross_entropy        an update (forward, backward, optimizer step) with cross_entropy
    codistill_ce         the same update with codistill_ce, alpha 1 and one peer
    codistill_ce_alpha0  codistill_ce at alpha 0 (the peer is there but unused)
    peer_forward         the peer's no-grad forward on the batch, alone

and prints

    overhead        = t_codistill / t_ce
    overhead_alpha0 = t_codistill_alpha0 / t_ce          (target <= 1.02)
    efficiency      = (t_ce + t_peer_forward) / t_codistill  (target >= 0.95)

efficiency 1.0 means the penalty costs nothing beyond the extra forward pass that
codistillation cannot avoid. The peer runs in the dtype --codistill-peer-dtype gives, as
in fairseq-train (auto: bf16 where that is fast). Targets: overhead <= 1.25 when the
model trains in half precision (--bf16, --fp16), <= 1.10 for an fp32 model with a
half-precision peer; an fp32 peer next to an fp32 model has none.

    python benchmarks/step_overhead.py                 # IWSLT transformer, 4096 tokens
    python benchmarks/step_overhead.py --quick         # under a minute on one CPU core
    python benchmarks/step_overhead.py --codistill-peer-dtype bf16   # fp32 model, bf16 peer
    python benchmarks/step_overhead.py --device cuda --fp16
"""
import argparse
from typing import Optional

import torch

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(p)
    p.add_argument("--reps", type=int, default=4,
                   help="timed rounds, best a multiple of 4 (one balanced cycle of orders); medians")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (Adam state, allocator)")
    p.add_argument("--quick", action="store_true",
                   help="--max-tokens 256: a smoke run of under a minute on a CPU")
    common.add_machine_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens = 256
    return args


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def overhead_target(dtype: torch.dtype, peer_dtype: torch.dtype) -> Optional[float]:
    """1.25 for a half-precision model, 1.10 for an fp32 model with a half-precision peer
    (its forward is ~0.1 of an fp32 update), none when both are fp32."""
    if dtype != torch.float32:
        return 1.25
    return 1.10 if peer_dtype != torch.float32 else None


def main(argv=None):
    args = parse_args(argv)
    device = common.setup_device(args)
    cfg, task = common.fairseq_setup(common.model_flags(args), args.src_vocab, args.tgt_vocab)
    dtype = common.train_dtype(cfg)
    model = common.prepare(task.build_model(cfg.model), dtype, device)
    peer = common.make_peer(task, cfg, dtype, device, args.codistill_peer_dtype)
    peer_dtype = next(peer.parameters()).dtype
    optimizer = common.build_optimizer(cfg, model)
    sample = common.make_batch(task, args.max_tokens, args.seq_len, device)
    criteria = {
        "cross_entropy": task.build_criterion(cfg.criterion),
        "codistill_ce": common.codistill_criterion(task, [peer], alpha=1.0),
        "codistill_ce_alpha0": common.codistill_criterion(task, [peer], alpha=0.0),
    }

    def update_with(criterion):
        return lambda: common.update(task, model, criterion, optimizer, sample)

    def peer_forward():
        with torch.inference_mode():
            peer(**sample["net_input"])

    cases = {name: update_with(c) for name, c in criteria.items()}
    cases["peer_forward"] = peer_forward
    times = common.interleaved(cases, args.reps, args.warmup, device, args.clock)

    print(f"# step_overhead: {args.arch} ({common.num_params(model) / 1e6:.1f}M params), "
          f"{sample['ntokens']} target tokens/batch ({sample['nsentences']} x {args.seq_len}), "
          f"output vocab {args.tgt_vocab}, {args.device} {dtype_name(dtype)}, "
          f"peer {dtype_name(peer_dtype)} (--codistill-peer-dtype {args.codistill_peer_dtype})")
    print(common.machine_line(device, args))
    for name, xs in times.items():
        print(common.time_line(name, xs))
    t = {name: common.median(xs) for name, xs in times.items()}
    overhead = t["codistill_ce"] / t["cross_entropy"]
    alpha0 = t["codistill_ce_alpha0"] / t["cross_entropy"]
    efficiency = (t["cross_entropy"] + t["peer_forward"]) / t["codistill_ce"]
    target = overhead_target(dtype, peer_dtype)
    print(common.ratio_line("overhead", overhead, "t_codistill / t_ce; "
                            + common.paired_ratio(times["codistill_ce"], times["cross_entropy"]),
                            *((f"<= {target}", overhead <= target) if target else ())))
    print(common.ratio_line("overhead_alpha0", alpha0, "t_codistill_alpha0 / t_ce; "
                            + common.paired_ratio(times["codistill_ce_alpha0"], times["cross_entropy"]),
                            "<= 1.02", alpha0 <= 1.02))
    print(common.ratio_line("efficiency", efficiency, "(t_ce + t_peer_forward) / t_codistill",
                            ">= 0.95", efficiency >= 0.95))
    print(common.ratio_line("peer_forward_share", t["peer_forward"] / t["cross_entropy"],
                            "t_peer_forward / t_ce: the unavoidable part of the overhead"))


if __name__ == "__main__":
    main()
