"""Shared pieces of the benchmarks: fairseq models built the way fairseq-train builds
them, a synthetic batch, interleaved timing and the printed figure lines.

Every script prints its results as lines ``ratio <name> = <value>`` (what the tables of
docs/performance.md and the smoke test read), preceded by ``time``/``size`` lines with the raw
figures they come from and a ``machine`` line saying where they were measured.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

# The package registers codistill_ce with fairseq as --user-dir would, once fairseq loads.
import fairseq_codistill  # noqa: F401
import torch

from fairseq_codistill import options as opts
from fairseq_codistill.exchange.peers import place_peer

# fairseq's and hydra's start-up chatter would bury the figures.
logging.disable(logging.INFO)
warnings.filterwarnings("ignore")

# -- the machine ---------------------------------------------------------------------


def add_machine_args(parser: argparse.ArgumentParser, clock: bool = True) -> None:
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the models run; cuda needs a GPU torch")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps timings stable on a shared machine")
    if clock:
        parser.add_argument("--clock", choices=("wall", "cpu"), default=None,
                            help="wall: elapsed time (the default on a GPU); cpu: this process's "
                                 "CPU time (the default on a CPU: other jobs' time slices on a "
                                 "shared machine do not count, their cache pressure still does)")


def setup_device(args) -> torch.device:
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no GPU (use --device cpu)")
    if getattr(args, "clock", "wall") is None:
        args.clock = "wall" if args.device == "cuda" else "cpu"
    return torch.device(args.device)


def clock_fn(name: str) -> Callable[[], float]:
    return time.process_time if name == "cpu" else time.perf_counter


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device, args) -> str:
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{cpu_name()} ({os.cpu_count()} cores, {args.threads} torch thread(s))")
    clock = {"cpu": "; times are process CPU time", "wall": "; times are wall-clock"}.get(
        getattr(args, "clock", None), "")
    return f"machine {where}; torch {torch.__version__}; python {platform.python_version()}{clock}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- timing --------------------------------------------------------------------------


def interleaved(cases: Dict[str, Callable[[], None]], reps: int, warmup: int,
                device: torch.device, clock: str = "wall") -> Dict[str, List[float]]:
    """Seconds per call of each case, ``reps`` rounds after ``warmup`` untimed ones.

    Each round runs every case once, so a slow spell of a shared machine hits all cases
    alike; the orders form a Williams design (A B D C, B C A D, C D B A, D A C B for
    four cases), so over each cycle every case also follows every other case once and
    what one leaves behind (caches, allocator state) weighs on all alike.
    """
    now = clock_fn(clock)
    names = list(cases)
    orders = williams(len(names))
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        for name in (names[i] for i in orders[(r - warmup) % len(orders)]):
            synchronize(device)
            t0 = now()
            cases[name]()
            synchronize(device)
            if r >= warmup:
                times[name].append(now() - t0)
    return times


def williams(n: int) -> List[List[int]]:
    """Orders of 0..n-1, n of them (2n for odd n), in which each i precedes each j once."""
    first, lo, hi = [0], 1, n - 1
    for k in range(1, n):
        if k % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    rows = [[(i + r) % n for i in first] for r in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """The interquartile range, as a reader's measure of the noise."""
    if len(xs) < 4:
        return f"range {min(xs):.4g}-{max(xs):.4g}"
    q = statistics.quantiles(xs, n=4)
    return f"IQR {q[0]:.4g}-{q[2]:.4g}"


def time_line(name: str, xs: Sequence[float], unit: str = "s") -> str:
    return f"time  {name:<28s} {median(xs):9.4f} {unit}  (median of {len(xs)}, {spread(xs)})"


def ratio_line(name: str, value: float, formula: str, target: Optional[str] = None,
               met: Optional[bool] = None) -> str:
    line = f"ratio {name} = {value:.4g}   ({formula})"
    if target is not None:
        line += f"   target {target}: {'met' if met else 'MISSED'}"
    return line


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> str:
    """Median and IQR of the per-round ratios: how much the ratio moved with the noise."""
    rs = [a / b for a, b in zip(num, den)]
    return f"per-round {median(rs):.4g}, {spread(rs)}"


# -- fairseq models ------------------------------------------------------------------

# fairseq's prepare-iwslt14.sh vocabularies: 8848 German, 6632 English types.
IWSLT_VOCAB = (8848, 6632)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model and batch of step_overhead and memory: the IWSLT'14 recipe's."""
    parser.add_argument("--arch", default="transformer_iwslt_de_en",
                        help="fairseq architecture; the default is the IWSLT'14 recipe's")
    parser.add_argument("--max-tokens", type=int, default=4096,
                        help="tokens per batch (the IWSLT'14 recipe's --max-tokens)")
    parser.add_argument("--seq-len", type=int, default=32,
                        help="tokens per sentence, both sides (IWSLT BPE sentences average ~25-30)")
    parser.add_argument("--src-vocab", type=int, default=IWSLT_VOCAB[0])
    parser.add_argument("--tgt-vocab", type=int, default=IWSLT_VOCAB[1],
                        help="output vocabulary: the logits the penalty compares are (B, T, V)")
    parser.add_argument("--fp16", action="store_true", help="train in fp16, as fairseq --fp16 (GPU)")
    parser.add_argument("--bf16", action="store_true", help="train in bf16, as fairseq --bf16")
    opts.PEER_DTYPE.add_to(parser)  # as fairseq-train's


def model_flags(args) -> List[str]:
    """fairseq-train flags for the arguments of ``add_model_args`` and the device."""
    out = ["--arch", args.arch]
    if args.arch == "transformer_iwslt_de_en":
        out.append("--share-decoder-input-output-embed")  # as the IWSLT'14 recipe
    elif args.arch in ("transformer_vaswani_wmt_en_de_big", "transformer_wmt_en_de_big"):
        out.append("--share-all-embeddings")  # as the WMT'16 recipe (equal vocabularies)
    if args.fp16:
        out.append("--fp16")
    if args.bf16:
        out.append("--bf16")
    if args.device == "cpu":
        out.append("--cpu")
    return out


def write_dicts(directory: Path, src_vocab: int, tgt_vocab: int) -> None:
    """fairseq dictionaries of made-up words; fairseq adds its 4 special symbols."""
    for lang, size in (("src", src_vocab), ("tgt", tgt_vocab)):
        with open(directory / f"dict.{lang}.txt", "w") as f:
            for i in range(size - 4):
                f.write(f"w{i} {size - i}\n")


def fairseq_setup(arch_args: Sequence[str], src_vocab: int, tgt_vocab: int,
                  extra: Sequence[str] = ()):
    """(cfg, task) as fairseq-train builds them, on dictionaries of the given sizes."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    with tempfile.TemporaryDirectory(prefix="codistill-bench-dict-") as data:
        write_dicts(Path(data), src_vocab, tgt_vocab)
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [
            data, "--task", "translation", "--source-lang", "src", "--target-lang", "tgt",
            "--criterion", "cross_entropy", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--lr", "1e-5", "--seed", "1", *arch_args, *extra,
        ])
        cfg = convert_namespace_to_omegaconf(args)
        return cfg, tasks.setup_task(cfg.task)  # reads the dictionaries, nothing later


def big_transformer_args(params: float, vocab: int = 32768) -> List[str]:
    """A transformer-big layout (6+6 layers, FFN 4d, heads of 64, shared embeddings) whose
    width d gives about ``params`` parameters: params ~ V d + 168 d^2 (24 d^2 per encoder
    layer, 32 d^2 per decoder layer). d = 1024, V = 32768 is transformer big, ~210M."""
    d = (-vocab + (vocab * vocab + 4 * 168 * params) ** 0.5) / (2 * 168)
    d = max(64, int(round(d / 64)) * 64)
    return [
        "--arch", "transformer_vaswani_wmt_en_de_big", "--share-all-embeddings",
        "--encoder-embed-dim", str(d), "--decoder-embed-dim", str(d),
        "--encoder-ffn-embed-dim", str(4 * d), "--decoder-ffn-embed-dim", str(4 * d),
        "--encoder-attention-heads", str(d // 64), "--decoder-attention-heads", str(d // 64),
    ]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights and buffers, tied ones counted once."""
    seen = {}
    for t in model.state_dict().values():
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
    return sum(seen.values())


def make_batch(task, tokens: int, seq_len: int, device: torch.device, seed: int = 0) -> dict:
    """A fairseq translation sample of ``tokens // seq_len`` sentences of ``seq_len``
    tokens each side (batches bucketed by length carry little padding)."""
    g = torch.Generator().manual_seed(seed)
    bsz = max(1, tokens // seq_len)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary

    def sentences(d):
        words = torch.randint(d.nspecial, len(d), (bsz, seq_len), generator=g)  # (B, T)
        words[:, -1] = d.eos()
        return words

    src, tgt = sentences(src_dict), sentences(tgt_dict)
    prev = torch.cat([tgt[:, -1:], tgt[:, :-1]], dim=1)  # eos first: teacher forcing
    sample = {
        "id": torch.arange(bsz),
        "nsentences": bsz,
        "ntokens": bsz * seq_len,
        "net_input": {
            "src_tokens": src,
            "src_lengths": torch.full((bsz,), seq_len, dtype=torch.long),
            "prev_output_tokens": prev,
        },
        "target": tgt,
    }
    from fairseq import utils

    return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample


def train_dtype(cfg) -> torch.dtype:
    if cfg.common.fp16:
        return torch.float16
    if cfg.common.bf16:
        return torch.bfloat16
    return torch.float32


def build_optimizer(cfg, model: torch.nn.Module):
    """The optimizer fairseq's Trainer builds for these flags (Adam, fp16/bf16 wrapped)."""
    from fairseq import optim

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.common.fp16 or cfg.common.bf16:
        return optim.FP16Optimizer.build_optimizer(cfg, params)
    return optim.build_optimizer(cfg.optimizer, params)


def prepare(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    return model.to(device=device, dtype=dtype)


def make_peer(task, cfg, dtype: torch.dtype, device: torch.device,
              peer_dtype: str) -> torch.nn.Module:
    """A peer as ``PeerExchange`` installs one next to a model trained in ``dtype``: in
    the dtype --codistill-peer-dtype gives, eval mode, run under ``torch.inference_mode()``."""
    like = torch.empty((), dtype=dtype, device=device)
    return place_peer(task.build_model(cfg.model), like, peer_dtype)


def update(task, model, criterion, optimizer, sample, update_num: int = 0) -> None:
    """One update as fairseq's Trainer does it: forward and backward (the task's
    train_step), gradient normalisation, clipping, the optimizer step."""
    optimizer.zero_grad()
    _, sample_size, _ = task.train_step(sample, model, criterion, optimizer, update_num)
    optimizer.multiply_grads(1.0 / (sample_size or 1.0))
    try:
        optimizer.clip_grad_norm(0.0)
    except OverflowError:  # fp16 loss scale too high: fairseq skips this update too
        return
    optimizer.step()


class PeerTask:
    """The part of ``codistill_translation`` that ``codistill_ce`` talks to: the
    dictionaries and ``codistill_peers()``, without an exchange directory."""

    def __init__(self, task, peers: Sequence[torch.nn.Module]):
        self.task, self.peers = task, list(peers)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def codistill_peers(self) -> List[torch.nn.Module]:
        return self.peers


def codistill_criterion(task, peers, alpha: float):
    from fairseq_codistill.fairseq_plugin.criterion import (
        CodistillCrossEntropyConfig,
        CodistillCrossEntropyCriterion,
    )

    cfg = CodistillCrossEntropyConfig(codistill_alpha=alpha, sentence_avg=False)
    return CodistillCrossEntropyCriterion(PeerTask(task, peers), cfg)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.4g} {unit}"
        n /= 1000
    return f"{n} B"
