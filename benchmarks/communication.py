"""Bytes a model sends and receives per update: codistillation against all-reduce.

Codistillation: every K updates each model writes one snapshot (S bytes, measured by
writing real snapshots of the model) and reads the newest snapshot of each of its P
peers (P = n-1 for the all-to-all topology, 1 for the ring), so per update it sends
S/K and receives P*S/K.

All-reduce: the same n*W workers (n models of W data-parallel workers each) form one
job that ring-all-reduces the fp32 gradients (G = 4 bytes per parameter) every update:
each worker sends and receives 2(m-1)/m * G, m = n*W. Counted per model across the
boundary between models (the links codistillation spares): the ring crosses it n
times, so each model sends and receives 2(m-1)/m * G there; with W = 1 that is simply
every worker's traffic. Codistilling models still all-reduce inside themselves when
W > 1; those bytes stay within a model and are the same for both, so they are left out.

    ratio allreduce_over_codistill = all-reduce bytes / codistillation bytes, per model
    per update (the paper's setting, n = 2, K = 2500, fp16 snapshots: >= 1000)

    python benchmarks/communication.py           # transformer big, ~210M parameters
    python benchmarks/communication.py --quick   # 20M parameters, seconds
"""
import argparse
import math
import shutil
import tempfile
from pathlib import Path

import common
from fairseq_codistill.exchange.peers import TOPOLOGIES, peer_ids
from fairseq_codistill.exchange.snapshot import SNAPSHOT_DTYPES, cast_state_dict, write_snapshot

GRAD_BYTES = 4  # fp32 gradients
# The floor of a snapshot: bytes per parameter in its dtype (int8: one byte per weight; its
# per-row scales and fp16 biases are the overhead the ratio shows).
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", type=float, default=210e6,
                   help="transformer-big layout scaled to this many parameters (210e6: the paper's model)")
    p.add_argument("--vocab", type=int, default=32768, help="joined vocabulary (WMT'16 En-De BPE)")
    p.add_argument("--num-models", type=int, default=2, help="n codistilling models (the paper: 2)")
    p.add_argument("--interval", type=int, default=2500, help="K, updates between exchanges (the paper: 2500)")
    p.add_argument("--topology", default="all", choices=TOPOLOGIES)
    p.add_argument("--dtype", default="fp16", choices=list(SNAPSHOT_DTYPES),
                   help="snapshot dtype of the headline ratio (all dtypes are measured)")
    p.add_argument("--workers-per-model", type=int, default=1,
                   help="W data-parallel workers inside each model (the paper's ImageNet runs: 8)")
    p.add_argument("--quick", action="store_true", help="--params 20e6: seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.params = 20e6
    if args.num_models < 2 or args.interval < 1 or args.workers_per_model < 1:
        p.error("--num-models must be >= 2, --interval and --workers-per-model >= 1")
    return args


def snapshot_sizes(model, root: Path) -> dict:
    """Bytes of one published snapshot of ``model`` in each dtype, as written to disk."""
    sizes = {}
    for i, dtype in enumerate(SNAPSHOT_DTYPES):
        key = write_snapshot(root, i, 1, cast_state_dict(model.state_dict(), dtype), dtype=dtype)
        sizes[dtype] = (root / key).stat().st_size
    return sizes


def codistill_bytes(snapshot: int, interval: int, num_models: int, topology: str):
    """(sent, received) per model per update."""
    peers = len(peer_ids(0, num_models, topology))
    return snapshot / interval, peers * snapshot / interval


def allreduce_bytes(params: int, num_models: int, workers_per_model: int):
    """(sent, received) per model per update across the boundary between models."""
    m = num_models * workers_per_model
    per_worker = 2 * (m - 1) / m * GRAD_BYTES * params
    return per_worker, per_worker


def main(argv=None):
    args = parse_args(argv)
    cfg, task = common.fairseq_setup(common.big_transformer_args(args.params, args.vocab),
                                     args.vocab, args.vocab, ["--cpu"])
    model = task.build_model(cfg.model)
    params = common.num_params(model)
    root = Path(tempfile.mkdtemp(prefix="codistill-bench-comm-"))
    try:
        sizes = snapshot_sizes(model, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"# communication: {params / 1e6:.1f}M params, n = {args.num_models} models x "
          f"W = {args.workers_per_model} workers, K = {args.interval}, topology {args.topology}")
    for dtype, size in sizes.items():
        floor = params * BYTES_PER_PARAM[dtype]
        print(f"size  snapshot {dtype:<5s} {common.fmt_bytes(size):>10s}   "
              f"(parameters alone: {common.fmt_bytes(floor)})")
    ar_sent, ar_recv = allreduce_bytes(params, args.num_models, args.workers_per_model)
    print(f"bytes all-reduce         per model per update: sent {common.fmt_bytes(ar_sent)}, "
          f"received {common.fmt_bytes(ar_recv)}")
    for dtype, size in sizes.items():
        sent, recv = codistill_bytes(size, args.interval, args.num_models, args.topology)
        print(f"bytes codistill {dtype:<5s}    per model per update: sent {common.fmt_bytes(sent)}, "
              f"received {common.fmt_bytes(recv)}")

    for dtype, size in sizes.items():
        floor = params * BYTES_PER_PARAM[dtype]
        print(common.ratio_line(f"snapshot_over_params_{dtype}", size / floor,
                                "snapshot bytes / (parameters x dtype size): 1.0 is the floor"))
    sent, recv = codistill_bytes(sizes[args.dtype], args.interval, args.num_models, args.topology)
    ratio = (ar_sent + ar_recv) / (sent + recv)
    print(common.ratio_line("allreduce_over_codistill", ratio,
                            f"all-reduce / codistillation bytes sent+received, {args.dtype} snapshots"))
    paper = (args.num_models, args.interval, args.dtype, args.topology) == (2, 2500, "fp16", "all")
    print(common.ratio_line("orders_of_magnitude", math.log10(ratio), "log10 of the ratio above",
                            *((">= 3 (paper's setting)", math.log10(ratio) >= 3) if paper else ())))
    print("table n  topology  K     dtype  all-reduce/codistillation")
    for n in (2, 4, 8):
        ar = sum(allreduce_bytes(params, n, args.workers_per_model))
        for topology in TOPOLOGIES:
            cd = sum(codistill_bytes(sizes[args.dtype], args.interval, n, topology))
            print(f"table {n:<2d} {topology:<9s} {args.interval:<5d} {args.dtype:<6s} {ar / cd:.4g}")


if __name__ == "__main__":
    main()
