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
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

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
    parser.add_argument("--num-models", type=int, required=True, help="number of models (>= 2)")
    parser.add_argument("--codistill-dir", required=True,
                        help="exchange directory, or object-store URL (s3://bucket/prefix), "
                             "shared by the jobs")
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
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="seconds between progress lines when not on a terminal")
    parser.add_argument("--fairseq-train", default=None,
                        help="fairseq-train executable (default: the one next to this Python)")
    parser.add_argument("--dry-run", action="store_true", help="print the job commands and exit")
    args = parser.parse_args(ours)
    if args.num_models < 2:
        parser.error(f"--num-models must be >= 2 (got {args.num_models})")
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
    for index, extra in args.model_args:
        if not index.isdigit() or int(index) >= args.num_models:
            parser.error(f"--model-args {index}: not a model id in [0, --num-models={args.num_models})")
        model_args.setdefault(int(index), []).extend(shlex.split(extra))
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
    if method not in AVERAGING_METHODS and criterion not in PEER_CRITERIA:
        parser.error(f"--criterion {criterion or 'cross_entropy (fairseq default)'} ignores "
                     f"the peers: with --codistill-method {method} the models share only their "
                     "logits, through the criterion's penalty, so each would train alone. Add "
                     "--criterion codistill_ce to the fairseq-train arguments, or use "
                     "--codistill-method localsgd or diloco to share weights with any criterion")
    return args, train_args


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
    def status(self) -> str:
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
    jobs = []
    for i in range(args.num_models):
        save_dir = Path(args.save_dir) / f"model{i}"
        cmd = [executable, *common,
               "--codistill-dir", args.codistill_dir, "--codistill-id", str(i),
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
        jobs.append(Job(i, cmd, env, save_dir, ranks=ranks))
    return jobs


class Launcher:
    def __init__(self, args, jobs: List[Job], out=sys.stdout):
        self.args, self.jobs, self.out = args, jobs, out
        self.max_update = flag_value(jobs[0].cmd, "--max-update")
        self.tty = out.isatty()
        self._drawn = 0
        self._last_print = 0.0
        self._last_lines: List[str] = []

    def start(self, job: Job) -> None:
        job.save_dir.mkdir(parents=True, exist_ok=True)
        attempt = "start" if job.restarts == 0 else f"restart {job.restarts}"
        job.procs = []
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
                                     "restarts": j.restarts, "log": str(j.log_path), "cmd": j.cmd}
                 for j in self.jobs}
        path = Path(self.args.save_dir) / "launch.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(state, indent=1).encode()))

    def run(self) -> int:
        for job in self.jobs:
            self.start(job)
        self.say(f"started {len(self.jobs)} codistilling jobs; logs in {self.args.save_dir}/model*/train.log")
        try:
            while any(j.returncode is None for j in self.jobs):
                time.sleep(1.0)
                self.poll()
                self.show()
        except KeyboardInterrupt:
            self.say("interrupted: stopping the jobs (their checkpoints stay)")
            self.stop_all()
            return 130
        self.show(force=True)
        failed = [j for j in self.jobs if j.returncode != 0]
        for j in failed:
            self.say(f"model{j.index} {j.status}; see {j.log_path}")
        return 1 if failed else 0

    def poll(self) -> None:
        for job in self.jobs:
            self.read_progress(job)
            if job.returncode is not None:
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
            self.write_state()

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
        stop(job.procs, signal.SIGTERM, grace=10.0)

    def stop_all(self) -> None:
        """Ctrl-C: every job's processes get SIGINT, SIGKILL after 30 s."""
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
        open_store(args.codistill_dir).check()  # a missing bucket fails once, here
    except ValueError as e:
        print(f"fairseq-codistill-launch: error: {e}", file=sys.stderr)
        return 2

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    return Launcher(args, jobs).run()


if __name__ == "__main__":
    sys.exit(main())
