"""fairseq-codistill-launch: start n codistilling fairseq-train jobs on this machine.

    fairseq-codistill-launch --num-models 2 --codistill-dir X --save-dir S -- \
        DATA --arch ... --criterion codistill_ce

Job i gets ``--codistill-id i --codistill-num-models n --codistill-dir X --save-dir S/model{i}``,
its own log ``S/model{i}/train.log``, its own GPUs (``--gpus-per-model G`` consecutive
devices, data-parallel inside the job with its own port) or, on a CPU machine, ``--cpu``
and a share of the cores. ``--ranks-per-model R`` makes each model data-parallel over R
ranks: R GPUs on a GPU machine; on a CPU one, R processes the launcher starts itself
(fairseq's tcp init on a free port, gloo, ``--ddp-backend legacy_ddp``), rank r > 0
logging to ``model{i}/train-rank{r}.log``. The launcher shows one progress line per job
and waits. A job that dies (any rank of it: its other ranks are stopped) is reported
and the others keep running; with ``--restart-failed`` it is started again and resumes
from its ``checkpoint_last.pt``. Exit status 0 iff every job finished cleanly.

``--num-models 1 --ranks-per-model R`` (R >= 2) starts one model data-parallel over R ranks
(all-reduce) with ``--codistill-num-models 1`` and no ``--codistill-dir``: the baseline
that codistillation is compared with, under the same launcher and faults.

Faults, to see where codistillation wins (each repeatable, refused before any job starts):

- ``--slowdown I:F`` runs every process of model I F times slower in wall time (F >= 1),
  without touching the training code: a daemon thread holds it stopped (SIGSTOP) for all
  but 1/F of every 0.25 s and continues it (SIGCONT) for the rest. ``--slowdown I/R:F``
  slows rank R of model I alone (``--ranks-per-model`` on a CPU), a straggler that the
  other ranks wait for at each all-reduce. A stopped process is continued before any
  signal but SIGKILL is sent to it, and when the launcher stops (only a SIGKILL of the
  launcher itself can leave one stopped; ``kill -CONT`` it).
- ``--preempt I:AT:FOR`` SIGKILLs every rank of model I AT seconds after the launch and
  starts it again FOR seconds later with the same command, so it resumes from its
  ``checkpoint_last.pt`` as a spot instance that comes back does. A preemption is not a
  failure: it needs no ``--restart-failed``, counts toward no ``--max-restarts``, and the
  model's exit status is that of its last attempt.

``SAVE_DIR/launch.json`` records for each model its pids, status, restarts, its
``slowdown`` (the factor of its slowest rank; 1 if none), ``slowed_ranks``,
``paused_seconds`` (wall time held stopped, so that its unthrottled pace is
updates / (wall - paused)), ``preemptions`` ([{"killed_at", "restarted_at"}], seconds
after the launch) and ``started_at`` (when each attempt began, seconds after the launch: a
restart's, after a failure or a preemption, is where fairseq's clock starts again).
"""
import argparse
import glob
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from fairseq_codistill.tools import logs
from fairseq_codistill.exchange.storage import atomic_write, open_store

PLUGIN_DIR = str(Path(__file__).resolve().parents[1])  # the package: --user-dir
# Criteria that apply the penalty against the peers; with --codistill-method distill (the
# default) any other would train the models alone while they exchange snapshots.
PEER_CRITERIA = ("codistill_ce",)
AVERAGING_METHODS = ("localsgd", "diloco")  # fairseq_codistill.exchange.peers's, without importing torch
# Flags the launcher owns: one value per job, so the user must not pass them.
OWNED_FLAGS = ("--codistill-id", "--codistill-num-models", "--codistill-dir", "--save-dir")
# ... and, for the ranks it starts on a CPU, one value per process.
RANK_FLAGS = ("--distributed-world-size", "--distributed-rank", "--distributed-init-method",
              "--distributed-port", "--distributed-no-spawn", "--distributed-backend")
# fairseq's DDP backends that train on a CPU: c10d (pytorch_ddp) passes device_ids to
# DistributedDataParallel, which a CPU module refuses; fully_sharded, slowmo need GPUs.
CPU_DDP_BACKENDS = ("legacy_ddp", "no_c10d")
# --slowdown's duty cycle (s): long beside a signal's delivery (~ms), short beside the
# seconds over which progress is read, so the pace is even at every scale that is watched.
THROTTLE_PERIOD = 0.25


def parse_args(argv: Optional[List[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        ours, train_args = argv[:split], argv[split + 1:]
    else:
        ours, train_args = argv, []
    parser = argparse.ArgumentParser(
        prog="fairseq-codistill-launch",
        description="Start N codistilling fairseq-train jobs; fairseq-train arguments follow '--'.")
    parser.add_argument("--num-models", type=int, required=True,
                        help="number of models (>= 2); 1 with --ranks-per-model >= 2 trains one "
                             "data-parallel model (all-reduce), the baseline, alone")
    parser.add_argument("--codistill-dir", default=None,
                        help="exchange directory, or object-store URL (s3://bucket/prefix), "
                             "shared by the jobs; required with --num-models >= 2, refused "
                             "with 1 (a lone model exchanges nothing)")
    parser.add_argument("--save-dir", required=True, help="job i saves to SAVE_DIR/model{i}")
    parser.add_argument("--gpus-per-model", type=int, default=None,
                        help="GPUs per job (default: visible GPUs // num-models; 0 = CPU)")
    parser.add_argument("--share-gpus", action="store_true",
                        help="more models than GPUs: job i runs on visible GPU i mod #GPUs, one "
                             "each (small models of a study sharing one GPU)")
    parser.add_argument("--ranks-per-model", type=int, default=1,
                        help="data-parallel ranks of each model: its GPUs on a GPU machine (as "
                             "--gpus-per-model); on a CPU machine, processes this launcher "
                             "starts (gloo, --ddp-backend legacy_ddp). Default 1")
    parser.add_argument("--threads-per-model", type=int, default=None,
                        help="CPU jobs: OMP/MKL threads of each process, a model's or a rank's "
                             "(default: cores // (num-models x ranks-per-model))")
    parser.add_argument("--model-args", nargs=2, action="append", default=[], metavar=("I", "ARGS"),
                        help="more fairseq-train arguments for model I alone, such as another "
                             "architecture: --model-args 1 '--encoder-layers 6 --decoder-layers 6' "
                             "(they come last, so they win); repeatable")
    parser.add_argument("--restart-failed", action="store_true",
                        help="restart a job that dies; it resumes from its checkpoint_last.pt")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="give up on a job after this many restarts (default 3)")
    parser.add_argument("--slowdown", action="append", default=[], metavar="I[/R]:F",
                        help="run model I F times slower in wall time (F >= 1; SIGSTOP for all "
                             f"but 1/F of every {THROTTLE_PERIOD:g} s): --slowdown 1:3 slows every "
                             "rank of model 1; --slowdown 0/1:2 slows rank 1 of model 0 alone "
                             "(--ranks-per-model on a CPU), a straggler in its all-reduce; "
                             "repeatable")
    parser.add_argument("--preempt", action="append", default=[], metavar="I:AT:FOR",
                        help="SIGKILL every rank of model I AT s after the launch and restart it "
                             "FOR s later, resuming from its checkpoint_last.pt (a spot instance "
                             "taken away and given back; not a failure: no --restart-failed "
                             "needed, no --max-restarts counted); repeatable")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between progress lines when not on a terminal")
    parser.add_argument("--fairseq-train", default=None,
                        help="fairseq-train executable (default: the one next to this Python)")
    parser.add_argument("--dry-run", action="store_true", help="print the job commands and exit")
    args = parser.parse_args(ours)
    if args.num_models < 1 or (args.num_models == 1 and args.ranks_per_model < 2):
        parser.error(f"--num-models must be >= 2 (got {args.num_models}), or 1 with "
                     "--ranks-per-model >= 2 (one data-parallel model: all-reduce)")
    if args.num_models == 1 and args.codistill_dir is not None:
        parser.error(f"--codistill-dir {args.codistill_dir} with --num-models 1: a lone model "
                     "exchanges nothing; drop --codistill-dir")
    if args.num_models > 1 and args.codistill_dir is None:
        parser.error(f"--codistill-dir is required with --num-models {args.num_models}: the "
                     "directory (or s3:// URL) where the models exchange their snapshots")
    if args.max_restarts < 0:
        parser.error(f"--max-restarts must be >= 0 (got {args.max_restarts})")
    if args.share_gpus and args.gpus_per_model not in (None, 1):
        parser.error(f"--share-gpus runs each model on one GPU (got --gpus-per-model {args.gpus_per_model})")
    if args.gpus_per_model is not None and args.gpus_per_model < 0:
        parser.error(f"--gpus-per-model must be >= 0 (got {args.gpus_per_model})")
    if args.threads_per_model is not None and args.threads_per_model < 1:
        parser.error(f"--threads-per-model must be >= 1 (got {args.threads_per_model})")
    if args.ranks_per_model < 1:
        parser.error(f"--ranks-per-model must be >= 1 (got {args.ranks_per_model})")
    if args.ranks_per_model > 1:
        if args.share_gpus:
            parser.error(f"--share-gpus runs each model on one GPU (got --ranks-per-model "
                         f"{args.ranks_per_model})")
        if args.gpus_per_model not in (None, 0, args.ranks_per_model):
            parser.error(f"--ranks-per-model {args.ranks_per_model} and --gpus-per-model "
                         f"{args.gpus_per_model} disagree: on GPUs a model's ranks are its GPUs")
    if not train_args:
        parser.error("fairseq-train arguments are missing: put them after '--'")
    model_args = {}
    try:
        for index, extra in args.model_args:
            model_args.setdefault(model_id("--model-args", index, index, args.num_models), []).extend(
                shlex.split(extra))
        args.slowdown = parse_slowdowns(args.slowdown, args.num_models, args.ranks_per_model)
        args.preempt = parse_preemptions(args.preempt, args.num_models)
    except ValueError as e:
        parser.error(str(e))
    args.model_args = model_args
    for flag in OWNED_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in train_args):
            parser.error(f"{flag} is set by the launcher for each job; pass the launcher's "
                         f"own --codistill-dir/--save-dir/--num-models instead")
    if args.ranks_per_model > 1:
        for flag in RANK_FLAGS:
            if has_flag(train_args, flag):
                parser.error(f"{flag} is set by the launcher for each rank with "
                             f"--ranks-per-model {args.ranks_per_model}; drop it")
    method = flag_value(train_args, "--codistill-method") or "distill"
    criterion = flag_value(train_args, "--criterion")
    if args.num_models > 1 and method not in AVERAGING_METHODS and criterion not in PEER_CRITERIA:
        parser.error(f"--criterion {criterion or 'cross_entropy (fairseq default)'} ignores "
                     f"the peers: with --codistill-method {method} the models share only their "
                     "logits, through the criterion's penalty, so each would train alone. Add "
                     "--criterion codistill_ce to the fairseq-train arguments, or use "
                     "--codistill-method localsgd or diloco to share weights with any criterion")
    return args, train_args


def model_id(flag: str, value: str, text: str, num_models: int) -> int:
    """``text``, a part of ``flag value``, as a model id, or a ValueError naming the flag."""
    if not text.isdigit() or int(text) >= num_models:
        raise ValueError(f"{flag} {value}: {text!r} is not a model id in [0, --num-models={num_models})")
    return int(text)


def bounded_number(flag: str, value: str, what: str, text: str, least: float, strict: bool = False) -> float:
    """``text`` as a finite float >= ``least`` (> with ``strict``), or a ValueError naming the flag."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < least or (strict and number == least):
        raise ValueError(f"{flag} {value}: {what} must be a number {'>' if strict else '>='} "
                         f"{least:g} (got {text!r})")
    return number


def parse_slowdowns(values: List[str], num_models: int, ranks: int) -> Dict[Tuple[int, Optional[int]], float]:
    """--slowdown I:F / I/R:F values as {(model, rank or None for all its ranks): F}."""
    slowdowns: Dict[Tuple[int, Optional[int]], float] = {}
    for value in values:
        target, sep, factor = value.rpartition(":")
        model, slash, rank = target.partition("/")
        if not sep or (slash and not rank):
            raise ValueError(f"--slowdown {value}: expected I:F (every rank of model I, F times "
                             "slower) or I/R:F (rank R of model I alone), such as 1:3 or 0/1:2")
        key = (model_id("--slowdown", value, model, num_models), None)
        if slash:
            if not rank.isdigit() or int(rank) >= ranks:
                raise ValueError(f"--slowdown {value}: rank {rank} is not in [0, "
                                 f"--ranks-per-model={ranks})")
            key = (key[0], int(rank))
        if any(m == key[0] and (r is None or key[1] is None or r == key[1]) for m, r in slowdowns):
            raise ValueError(f"--slowdown {value}: model {key[0]} is slowed twice; give one "
                             "factor per rank")
        slowdowns[key] = bounded_number("--slowdown", value, "the factor F", factor, 1.0)
    return slowdowns


class Preemption(NamedTuple):
    at: float  # seconds after the launch
    down: float  # seconds until it is started again


def parse_preemptions(values: List[str], num_models: int) -> Dict[int, List[Preemption]]:
    """--preempt I:AT:FOR values as {model: its preemptions in time order}."""
    plans: Dict[int, List[Preemption]] = {}
    for value in values:
        parts = value.split(":")
        if len(parts) != 3:
            raise ValueError(f"--preempt {value}: expected I:AT:FOR (model I killed AT s after "
                             "the launch, back FOR s later), such as 1:30:20")
        model = model_id("--preempt", value, parts[0], num_models)
        plans.setdefault(model, []).append(Preemption(
            bounded_number("--preempt", value, "AT (seconds after the launch)", parts[1], 0.0),
            bounded_number("--preempt", value, "FOR (seconds down)", parts[2], 0.0, strict=True)))
    for model, plan in plans.items():
        plan.sort()
        for before, after in zip(plan, plan[1:]):
            if after.at < before.at + before.down:
                raise ValueError(f"--preempt {model}:{after.at:g}:{after.down:g} comes while model "
                                 f"{model} is still down from --preempt {model}:{before.at:g}:"
                                 f"{before.down:g} (until {before.at + before.down:g} s)")
    return plans


def visible_gpus() -> List[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    # nvidia-smi, not torch: the launcher only starts processes and writes JSON, and
    # importing torch would cost it seconds (and tie it to the training environment).
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_flag(args: List[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def flag_value(args: List[str], flag: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


@dataclass
class Job:
    """One model: one fairseq-train process, or one per rank (``ranks`` > 1, on a CPU)."""

    index: int
    cmd: List[str]  # without the per-rank flags
    env: Dict[str, str]
    save_dir: Path
    ranks: int = 1
    procs: List[subprocess.Popen] = field(default_factory=list)
    restarts: int = 0
    returncode: Optional[int] = None
    log_offset: int = 0
    progress: dict = field(default_factory=dict)
    slowdown: List[float] = field(default_factory=lambda: [1.0])  # --slowdown of each process
    preempts: List[Preemption] = field(default_factory=list)  # --preempt, those still to come
    preemptions: List[dict] = field(default_factory=list)  # those done: killed_at, restarted_at
    down_until: Optional[float] = None  # preempted: when it comes back (s after the launch)
    paused_seconds: float = 0.0  # wall time held stopped by --slowdown
    started_at: List[float] = field(default_factory=list)  # each attempt's start (s after the launch)

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        """Rank 0's process: the one that logs, saves checkpoints and publishes."""
        return self.procs[0] if self.procs else None

    @property
    def log_path(self) -> Path:
        return self.save_dir / "train.log"

    def rank_log(self, rank: int) -> Path:
        return self.log_path if rank == 0 else self.save_dir / f"train-rank{rank}.log"

    def rank_cmds(self) -> List[List[str]]:
        """Each rank's command; a fresh port for fairseq's tcp init at every (re)start."""
        if self.ranks == 1:
            return [self.cmd]
        init = f"tcp://127.0.0.1:{free_port()}"
        ddp = [] if has_flag(self.cmd, "--ddp-backend") else ["--ddp-backend", CPU_DDP_BACKENDS[0]]
        return [[*self.cmd, "--distributed-world-size", str(self.ranks), "--distributed-rank", str(r),
                 "--distributed-init-method", init, "--distributed-no-spawn",
                 "--distributed-backend", "gloo", *ddp] for r in range(self.ranks)]

    @property
    def slowed(self) -> bool:
        return max(self.slowdown) > 1

    def slowdown_text(self) -> str:
        if len(set(self.slowdown)) == 1:
            return f"slowed {self.slowdown[0]:g}x"
        return ", ".join(f"rank {r} slowed {f:g}x" for r, f in enumerate(self.slowdown) if f > 1)

    @property
    def status(self) -> str:
        if self.down_until is not None:
            return "preempted"
        if self.procs and self.returncode is None:
            return "running"
        return "done" if self.returncode == 0 else f"died ({describe_exit(self.returncode)})"


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def build_jobs(args, train_args: List[str]) -> List[Job]:
    gpus = visible_gpus()
    gpus_per_model = args.gpus_per_model
    if args.share_gpus:
        if not gpus:
            raise SystemExit("fairseq-codistill-launch: --share-gpus, but no GPU is visible")
        gpus_per_model = 1
        gpus = [gpus[i % len(gpus)] for i in range(args.num_models)]
    if gpus_per_model is None:
        gpus_per_model = len(gpus) // args.num_models
    if gpus_per_model * args.num_models > len(gpus):
        raise SystemExit(f"fairseq-codistill-launch: --gpus-per-model {gpus_per_model} x "
                         f"--num-models {args.num_models} needs {gpus_per_model * args.num_models} "
                         f"GPUs, {len(gpus)} visible")
    if args.ranks_per_model > 1 and gpus:
        gpus_per_model = args.ranks_per_model  # fairseq spawns one process per GPU
    ranks = args.ranks_per_model if gpus_per_model == 0 else 1  # processes the launcher starts
    if ranks > 1:
        backend = flag_value(train_args, "--ddp-backend")
        if backend is not None and backend not in CPU_DDP_BACKENDS:
            raise SystemExit(f"fairseq-codistill-launch: --ddp-backend {backend} does not train on "
                             f"a CPU (c10d hands device_ids to DDP); use {CPU_DDP_BACKENDS[0]} or "
                             "leave it to the launcher")
    threads = args.threads_per_model or max(1, (os.cpu_count() or 1) // (args.num_models * ranks))
    executable = args.fairseq_train or shutil.which("fairseq-train", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if executable is None:
        raise SystemExit("fairseq-codistill-launch: fairseq-train not found; pass --fairseq-train")

    common = list(train_args)
    if not has_flag(common, "--user-dir"):
        common += ["--user-dir", PLUGIN_DIR]
    if not has_flag(common, "--task"):
        common += ["--task", "codistill_translation"]
    if ranks == 1 and args.ranks_per_model > 1 and any(r is not None for _, r in args.slowdown):
        raise SystemExit("fairseq-codistill-launch: --slowdown I/R:F slows a rank this launcher "
                         "starts itself (--ranks-per-model on a CPU); on GPUs fairseq starts a "
                         "model's ranks, so slow the whole model with --slowdown I:F")
    exchange = ["--codistill-dir", args.codistill_dir] if args.codistill_dir else []
    jobs = []
    for i in range(args.num_models):
        save_dir = Path(args.save_dir) / f"model{i}"
        cmd = [executable, *common, *exchange, "--codistill-id", str(i),
               "--codistill-num-models", str(args.num_models), "--save-dir", str(save_dir),
               *args.model_args.get(i, [])]
        env = dict(os.environ)
        if gpus_per_model == 0:
            if not has_flag(cmd, "--cpu"):
                cmd.append("--cpu")
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       CUDA_VISIBLE_DEVICES="")
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * gpus_per_model:(i + 1) * gpus_per_model])
            if gpus_per_model > 1:
                if not has_flag(cmd, "--distributed-world-size"):
                    cmd += ["--distributed-world-size", str(gpus_per_model)]
                if not has_flag(cmd, "--distributed-port"):
                    cmd += ["--distributed-port", str(free_port())]
        whole = args.slowdown.get((i, None), 1.0)
        slowdown = [args.slowdown.get((i, r), whole) for r in range(ranks)]
        jobs.append(Job(i, cmd, env, save_dir, ranks=ranks, slowdown=slowdown,
                        preempts=list(args.preempt.get(i, []))))
    return jobs


def process_tree(pid: int) -> List[int]:
    """``pid`` and its descendants (the ranks fairseq spawns on GPUs, data workers), from /proc."""
    tree = [pid]
    for parent in tree:  # grows as it goes: breadth first
        for children in glob.glob(f"/proc/{parent}/task/*/children"):
            try:
                with open(children) as f:
                    tree += [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                pass  # it ended meanwhile
    return tree


def signal_tree(pid: int, sig: int) -> List[int]:
    """Send ``sig`` to ``pid`` and its descendants; the pids it reached."""
    reached = []
    for p in process_tree(pid):
        try:
            os.kill(p, sig)
            reached.append(p)
        except ProcessLookupError:
            pass
    return reached


class Throttle:
    """--slowdown's duty cycle, one daemon thread for every slowed process.

    Each cycle of ``period`` s continues every process it holds, then stops (SIGSTOP) a
    process slowed F times ``period``/F s into the cycle, with its descendants, until the
    cycle ends. It reads each job's processes afresh every cycle, so a restarted job's new
    ones are slowed too, and adds to ``job.paused_seconds`` the time the job had a process
    held (its ranks wait for the held one at their next all-reduce). ``release`` continues
    a job's processes before the launcher signals them (SIGTERM, SIGINT wait for SIGCONT) and
    leaves them alone until ``engage``; ``close`` continues everything for good.
    """

    def __init__(self, jobs: List[Job], period: float = THROTTLE_PERIOD):
        self.jobs = [j for j in jobs if j.slowed]
        self.period = period
        self._lock = threading.Lock()
        self._held: Dict[int, Tuple[float, List[int]]] = {}  # job index -> (since, pids stopped)
        self._released = set()  # job indices left alone
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slowdown", daemon=True)

    def start(self) -> None:
        if self.jobs:
            self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._closed.is_set():
                self._cycle(time.monotonic())
        finally:
            self._continue()

    def _cycle(self, start: float) -> None:
        plan = sorted((self.period / f, job.index, rank) for job in self.jobs
                      for rank, f in enumerate(job.slowdown) if f > 1)
        jobs = {job.index: job for job in self.jobs}
        for offset, index, rank in plan:
            if self._closed.wait(max(0.0, start + offset - time.monotonic())):
                return
            self._stop(jobs[index], rank)
        self._closed.wait(max(0.0, start + self.period - time.monotonic()))
        self._continue()

    def _stop(self, job: Job, rank: int) -> None:
        with self._lock:
            procs = job.procs
            # poll() first: a pid reaped is no longer ours to signal
            if job.index in self._released or rank >= len(procs) or procs[rank].poll() is not None:
                return
            since, held = self._held.get(job.index, (time.monotonic(), []))
            self._held[job.index] = (since, held + signal_tree(procs[rank].pid, signal.SIGSTOP))

    def _continue(self, indices: Optional[List[int]] = None) -> None:
        """Continue the held processes of the jobs ``indices`` (default: all)."""
        with self._lock:
            now, jobs = time.monotonic(), {job.index: job for job in self.jobs}
            for index in list(self._held) if indices is None else indices:
                if index in self._held:
                    since, held = self._held.pop(index)
                    for pid in held:
                        try:
                            os.kill(pid, signal.SIGCONT)
                        except ProcessLookupError:
                            pass
                    jobs[index].paused_seconds += now - since

    def release(self, job: Job) -> None:
        with self._lock:
            self._released.add(job.index)
        self._continue([job.index])

    def engage(self, job: Job) -> None:
        with self._lock:
            self._released.discard(job.index)

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.period)
        self._continue()


class Launcher:
    def __init__(self, args, jobs: List[Job], out=sys.stdout):
        self.args, self.jobs, self.out = args, jobs, out
        self.max_update = flag_value(jobs[0].cmd, "--max-update")
        self.tty = out.isatty()
        self._drawn = 0
        self._last_print = 0.0
        self._last_lines: List[str] = []
        self.t0 = time.monotonic()  # the launch: --preempt's clock and launch.json's
        self.throttle = Throttle(jobs)

    def now(self) -> float:
        """Seconds since the launch."""
        return time.monotonic() - self.t0

    def start(self, job: Job, attempt: Optional[str] = None) -> None:
        job.save_dir.mkdir(parents=True, exist_ok=True)
        attempt = attempt or ("start" if job.restarts == 0 else f"restart {job.restarts}")
        self.throttle.engage(job)
        job.procs = []
        job.started_at.append(round(self.now(), 1))
        for rank, cmd in enumerate(job.rank_cmds()):
            with open(job.rank_log(rank), "a") as log:
                log.write(f"=== fairseq-codistill-launch: {attempt} of model {job.index}"
                          f"{f' rank {rank}' if job.ranks > 1 else ''} at "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
                log.flush()
                job.procs.append(subprocess.Popen(cmd, env=job.env, stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        job.returncode = None
        self.write_state()

    def write_state(self) -> None:
        """SAVE_DIR/launch.json: each job's pid(s), command and log (for tools and people)."""
        state = {f"model{j.index}": {"pid": j.proc.pid if j.proc else None,
                                     "pids": [p.pid for p in j.procs], "status": j.status,
                                     "restarts": j.restarts, "log": str(j.log_path), "cmd": j.cmd,
                                     "slowdown": max(j.slowdown),
                                     "slowed_ranks": [r for r, f in enumerate(j.slowdown) if f > 1],
                                     "paused_seconds": round(j.paused_seconds, 2),
                                     "preemptions": j.preemptions, "started_at": j.started_at}
                 for j in self.jobs}
        path = Path(self.args.save_dir) / "launch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(state, indent=1).encode()))

    def run(self) -> int:
        self.t0 = time.monotonic()
        for job in self.jobs:
            self.start(job)
        self.throttle.start()
        what = (f"{len(self.jobs)} codistilling jobs" if len(self.jobs) > 1 else
                f"1 job (one model on {self.args.ranks_per_model} ranks, all-reduce, no exchange)")
        self.say(f"started {what}; logs in {self.args.save_dir}/model*/train.log")
        for job in self.jobs:
            if job.slowed:
                self.say(f"model{job.index} {job.slowdown_text()}: a duty cycle of SIGSTOP and "
                         f"SIGCONT every {self.throttle.period:g} s")
        try:
            while any(j.returncode is None for j in self.jobs):
                time.sleep(1.0)
                self.poll()
                self.preempt_due()
                self.show()
        except KeyboardInterrupt:
            self.say("interrupted: stopping the jobs (their checkpoints stay)")
            self.stop_all()
            return 130
        finally:
            self.throttle.close()  # never leave a process stopped
        self.write_state()  # the final paused_seconds
        self.show(force=True)
        failed = [j for j in self.jobs if j.returncode != 0]
        for j in failed:
            self.say(f"model{j.index} {j.status}; see {j.log_path}")
        return 1 if failed else 0

    def poll(self) -> None:
        for job in self.jobs:
            self.read_progress(job)
            if job.returncode is not None or job.down_until is not None:
                continue
            codes = [p.poll() for p in job.procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed and None in codes:
                # The other ranks would wait for the dead one in their next collective.
                rank, code = failed[0]
                self.say(f"model{job.index} rank {rank} died ({describe_exit(code)}); stopping "
                         "its other ranks")
                self.stop_ranks(job)
                codes = [p.returncode for p in job.procs]
            if None in codes:
                continue
            job.returncode = first_failure(codes)
            if job.returncode == 0:
                self.say(f"model{job.index} finished")
            elif self.args.restart_failed and job.restarts < self.args.max_restarts:
                self.say(f"model{job.index} {job.status}; restarting from its checkpoint_last.pt "
                         f"({job.restarts + 1}/{self.args.max_restarts})")
                job.restarts += 1
                self.start(job)
            else:
                self.say(f"model{job.index} {job.status}; the other jobs keep running")
            if job.returncode is not None:
                for plan in job.preempts:
                    self.say(f"model{job.index} {job.status} before its preemption at "
                             f"{plan.at:g}s: nothing to preempt")
                job.preempts = []
            self.write_state()

    def preempt_due(self) -> None:
        """--preempt: kill the jobs whose time has come, restart those whose time is up."""
        now = self.now()
        for job in self.jobs:
            if job.down_until is not None and now >= job.down_until:
                self.come_back(job, now)
            elif job.down_until is None and job.returncode is None and job.preempts \
                    and now >= job.preempts[0].at:
                self.preempt(job, job.preempts.pop(0), now)

    def preempt(self, job: Job, plan: Preemption, now: float) -> None:
        self.throttle.release(job)  # SIGKILL needs no SIGCONT, but the pids must be left alone
        for p in job.procs:
            if p.poll() is None:
                signal_tree(p.pid, signal.SIGKILL)
            p.wait()
        job.down_until = now + plan.down
        job.preemptions.append({"killed_at": round(now, 1), "restarted_at": None})
        ranks = f", {job.ranks} ranks" if job.ranks > 1 else ""
        self.say(f"model{job.index} preempted at {now:.0f}s: killed (SIGKILL{ranks}); "
                 f"back in {plan.down:g}s")
        self.write_state()

    def come_back(self, job: Job, now: float) -> None:
        job.down_until = None
        job.preemptions[-1]["restarted_at"] = round(now, 1)
        resume = ("resuming from its checkpoint_last.pt" if (job.save_dir / "checkpoint_last.pt").exists()
                  else "from scratch: it had saved no checkpoint_last.pt")
        self.say(f"model{job.index} restarted after preemption, {resume}")
        self.start(job, attempt=f"restart after preemption {len(job.preemptions)}")

    def read_progress(self, job: Job) -> None:
        try:
            with open(job.log_path, "rb") as f:
                f.seek(job.log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # only whole lines
        job.log_offset += end
        for tag, record in logs.records(chunk[:end].decode(errors="replace")):
            job.progress.update(record if tag != "valid" else {"valid_nll": record.get("nll_loss")})

    def progress_line(self, job: Job) -> str:
        p = job.progress
        parts = [f"model{job.index}", job.status]
        if "num_updates" in p:
            parts.append(f"update {p['num_updates']:g}" + (f"/{self.max_update}" if self.max_update else ""))
        for key, label in (("epoch", "epoch"), ("loss", "loss"), ("codistill_loss", "codistill"),
                           ("alpha", "alpha"), ("valid_nll", "valid nll")):
            if isinstance(p.get(key), float):  # as fairseq rounded it
                parts.append(f"{label} {p[key]:g}")
        if job.restarts:
            parts.append(f"restarts {job.restarts}")
        if job.slowed:
            parts.append(job.slowdown_text())
        if job.down_until is not None:
            parts.append(f"back in {max(0.0, job.down_until - self.now()):.0f}s")
        elif job.preemptions:
            parts.append(f"preempted {len(job.preemptions)}x")
        return " | ".join(parts)

    def show(self, force: bool = False) -> None:
        lines = [self.progress_line(j) for j in self.jobs]
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")
            self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self._drawn = len(lines)
        elif lines != self._last_lines and (
                force or time.monotonic() - self._last_print >= self.args.progress_interval):
            self.out.write("".join(f"{line}\n" for line in lines))
            self._last_print, self._last_lines = time.monotonic(), lines
        self.out.flush()

    def say(self, message: str) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self.out.write(f"[fairseq-codistill-launch] {message}\n")
        self.out.flush()

    def stop_ranks(self, job: Job) -> None:
        """Stop the ranks of ``job`` still running: SIGTERM, SIGKILL after 10 s."""
        self.throttle.release(job)  # a stopped process holds SIGTERM until continued
        stop(job.procs, signal.SIGTERM, grace=10.0)

    def stop_all(self) -> None:
        """Ctrl-C: every job's processes get SIGINT, SIGKILL after 30 s."""
        self.throttle.close()
        stop([p for job in self.jobs for p in job.procs], signal.SIGINT, grace=30.0)
        for job in self.jobs:
            if job.procs:
                job.returncode = first_failure([p.returncode for p in job.procs])
        self.write_state()


def stop(procs: List[subprocess.Popen], sig: int, grace: float) -> None:
    """Send ``sig`` to those of ``procs`` still running; SIGKILL those left after ``grace`` s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def first_failure(codes: List[int]) -> int:
    """A job's exit status: its first rank's failure, or 0."""
    return next((c for c in codes if c != 0), 0)


def main(argv: Optional[List[str]] = None) -> int:
    args, train_args = parse_args(argv)
    jobs = build_jobs(args, train_args)
    if args.dry_run:
        for job in jobs:
            devices = job.env.get("CUDA_VISIBLE_DEVICES", "")
            for cmd in job.rank_cmds():
                print(f"CUDA_VISIBLE_DEVICES={devices} " + " ".join(cmd))
        return 0
    try:
        if args.codistill_dir:
            open_store(args.codistill_dir).check()  # a missing bucket fails once, here
    except ValueError as e:
        print(f"fairseq-codistill-launch: error: {e}", file=sys.stderr)
        return 2

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    # Started in the background by a script (`nohup ... &`), the launcher inherits SIGINT
    # ignored, and its jobs would too (exec keeps an ignored signal ignored): fairseq-train
    # would sit out the SIGINT that stops it until the SIGKILL 30 s later. Catching it here
    # starts every job with SIGINT at its default, and makes Ctrl-C work on the launcher.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return Launcher(args, jobs).run()


if __name__ == "__main__":
    sys.exit(main())
