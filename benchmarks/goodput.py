"""Goodput under a straggler: how much of its pace the fast model keeps when the other
model (or, for all-reduce, the other rank) runs 2x slower.

Each method trains a tiny transformer on the CPU through fairseq-codistill-launch, twice in
a row: with no slowdown, then with --slowdown 1:2 (model 1 stopped half of every 0.25 s);
the all-reduce baseline is one model on 2 gloo ranks with --slowdown 0/1:2 (its rank 1 is
the straggler). The fast model's pace is read from model 0's JSON log: updates per second
of wall time (fairseq's per-record ``ups``, stopped time included) over the records after
start-up (the first two), and for codistillation only those where its peer is loaded
(num_peers == 1), for a window of --window seconds (40 duty cycles of the slowdown in the
full run). The pairs run one method after the other, (no slowdown, slowdown) each, so a
drift of the machine hits both runs of a pair. Where the machine has fewer free cores than
processes (2 cores for 2 models, or other jobs beside), a straggler stopped half the time
leaves model 0 more CPU, so a method that never waits can show a goodput above 1.

    ratio goodput_<method> = ups of model 0 with the straggler / ups with none
      codistill       (--codistill-max-lead 0: never waits for its peer)        target >= 0.95
      localsgd_async  (--codistill-async: averages with whatever has arrived)   target >= 0.9
      diloco_async    (full run only)                                           target >= 0.9
      localsgd_sync   (waits for the peer at every averaging step: ~0.5)        no target
      allreduce       (one 2-rank job: every update waits for the slow rank)    no target

    python benchmarks/goodput.py           # 12 s windows, with diloco async: ~5 minutes
    python benchmarks/goodput.py --quick   # 2 s windows, four methods: ~90 s
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import common
import torch

from fairseq_codistill.tools import logs

BIN = Path(sys.executable).parent
SLOWDOWN = 2

# A 2-layer, 64-dim transformer: ~40 ms an update on one core of a 2-core machine, so that a 10-update
# exchange interval spans more than one 0.25 s duty cycle of the slowdown.
TRAIN = [
    "--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "400",
    "--log-format", "json", "--log-interval", "10", "--no-progress-bar",
    "--cpu", "--num-workers", "0", "--seed", "1",
    "--max-update", "1000000", "--no-save", "--disable-validation",
    "--codistill-interval", "10",
]
# (method, launcher flags, fairseq-train flags, target)
METHODS = {
    "codistill": (["--num-models", "2"], ["--criterion", "codistill_ce", "--codistill-max-lead", "0",
                                          "--codistill-wait-for-peers", "0"], 0.95),
    "localsgd_async": (["--num-models", "2"], ["--criterion", "cross_entropy", "--codistill-method",
                                               "localsgd", "--codistill-async"], 0.9),
    "diloco_async": (["--num-models", "2"], ["--criterion", "cross_entropy", "--codistill-method",
                                             "diloco", "--codistill-async"], 0.9),
    "localsgd_sync": (["--num-models", "2"], ["--criterion", "cross_entropy", "--codistill-method",
                                              "localsgd", "--codistill-wait-for-peers", "600"], None),
    "allreduce": (["--num-models", "1", "--ranks-per-model", "2"], ["--criterion", "cross_entropy"], None),
}
QUICK = ("codistill", "localsgd_async", "localsgd_sync", "allreduce")
SKIP_RECORDS = 2  # start-up: the first record's ups includes loading, the second warm-up


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--window", type=float, default=12.0,
                   help="seconds of steady-state training measured per run (12: 48 duty cycles)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--quick", action="store_true", help="--window 2, four methods: ~90 s")
    args = p.parse_args(argv)
    if args.quick:
        args.window, args.methods = 2.0, [m for m in args.methods if m in QUICK]
    args.threads, args.clock, args.device = 1, "wall", "cpu"  # for common.machine_line
    return args


def make_data(root: Path, sentences: int = 4000, seed: int = 0) -> Path:
    """The tests' toy task (target: the upper-cased source, reversed), binarised; enough
    sentences that epoch boundaries are rare."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    text = root / "text"
    text.mkdir(parents=True)
    for split, n in (("train", sentences), ("valid", 20)):
        with open(text / f"{split}.src", "w") as s, open(text / f"{split}.tgt", "w") as t:
            for _ in range(n):
                toks = [rng.choice(words) for _ in range(rng.randint(3, 8))]
                s.write(" ".join(toks) + "\n")
                t.write(" ".join(reversed(toks)).upper() + "\n")
    subprocess.run([str(BIN / "fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
                    "--trainpref", str(text / "train"), "--validpref", str(text / "valid"),
                    "--destdir", str(root / "bin"), "--joined-dictionary", "--workers", "1"],
                   check=True, capture_output=True)
    return root / "bin"


def steady_records(log: str, method: str) -> List[dict]:
    """Model 0's train_inner records after start-up (with its peer loaded, codistilling)."""
    records = [r for _, r in logs.records(log, "train_inner")][SKIP_RECORDS:]
    if method == "codistill":
        records = [r for r in records if r.get("num_peers") == 1]
    return records


def pace(records: Sequence[dict]) -> Tuple[float, float]:
    """(updates, seconds) from the first record to the last: each record's ups covers the
    updates since the one before it."""
    updates = seconds = 0.0
    for before, record in zip(records, records[1:]):
        n = record["num_updates"] - before["num_updates"]
        updates, seconds = updates + n, seconds + n / record["ups"]
    return updates, seconds


def measure(method: str, data: Path, run_dir: Path, window: float, slowed: bool) -> Tuple[float, float]:
    """Train until model 0 has ``window`` s of steady records, stop the launcher, return
    (updates, seconds) of model 0."""
    launch, train, _ = METHODS[method]
    straggler = ("0/1" if method == "allreduce" else "1") + f":{SLOWDOWN}"
    cmd = [str(BIN / "fairseq-codistill-launch"), *launch, "--threads-per-model", "1",
           "--save-dir", str(run_dir), "--progress-interval", "60",
           *(["--codistill-dir", str(run_dir / "x")] if method != "allreduce" else []),
           *(["--slowdown", straggler] if slowed else []), "--", str(data), *TRAIN, *train]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path, deadline = run_dir / "model0" / "train.log", time.monotonic() + 60 + 4 * window
    with open(run_dir.parent / f"{run_dir.name}.out", "w") as out:
        launcher = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                time.sleep(0.25)
                log = log_path.read_text() if log_path.exists() else ""
                updates, seconds = pace(steady_records(log, method))
                if seconds >= window:
                    return updates, seconds
                if launcher.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"goodput: {method} measured {seconds:.1f} of {window} s "
                                     f"(launcher {launcher.poll()}); model 0's log ends:\n{log[-3000:]}")
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()


def main(argv=None):
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="codistill-bench-goodput-"))
    lines = []
    try:
        data = make_data(root)
        print(f"# goodput: tiny transformer on the CPU, 1 thread a process, slowdown {SLOWDOWN}x, "
              f"{args.window:g} s windows")
        for method in args.methods:
            rates = []
            for slowed in (False, True):
                updates, seconds = measure(method, data, root / f"{method}-{int(slowed)}",
                                           args.window, slowed)
                rates.append(updates / seconds)
                label = f"{method}, {'straggler' if slowed else 'no slowdown'}"
                print(f"time  {label:<32s} {rates[-1]:8.2f} updates/s  "
                      f"({updates:.0f} updates of model 0 in {seconds:.1f} s)", flush=True)
            target = METHODS[method][2]
            goodput = rates[1] / rates[0]
            lines.append(common.ratio_line(
                f"goodput_{method}", goodput, "model 0's updates/s with the straggler / with none",
                *((f">= {target}", goodput >= target) if target is not None else ())))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(common.machine_line(torch.device("cpu"), args))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
