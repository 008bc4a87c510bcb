"""Results as data: where a run ran, and a study's small files kept apart from its run
folders, so that every table and plot of ``docs/study.md`` can be generated again from what
is committed under ``results/``.

    fairseq-codistill-report --study study/runs --export results/study/NAME

copies, for every run with a ``study.json`` (``recipes/study.sh``), that file, the
launcher's ``launch.json`` and, beside each model's log, ``eval.json``, ``eval-best.json``
and ``train.json``: the JSON records of its ``train.log`` (training, validation, set-up),
which ``fairseq_codistill.tools.runs`` reads where the log itself is not kept. No
checkpoints, no hypotheses: a 480-update pair takes some 40 KB.
"""
import datetime
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_codistill.exchange.storage import atomic_write
from fairseq_codistill.tools.runs import MODEL_DIR, SERIES_FILE, Series, parse_log

KEPT = ("study.json", "launch.json", "env.json")  # beside a run's models
ENSEMBLE = Path("ensemble", "eval.json")
KEPT_PER_MODEL = ("eval.json", "eval-best.json")
# CPU features that decide a CPU run's precision and pace (PRECISION=auto picks bf16 with them).
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def environment(precision: str, device: str, threads: int) -> Dict[str, object]:
    """Where and with what a run trained: what a reader needs before comparing its wall
    time or its numbers with another run's."""
    return {"precision": precision, "device": device, "threads": threads,
            "cpu": _cpu_model(), "cpu_flags": [f for f in CPU_FLAGS if f in _cpu_flags()],
            "cores": os.cpu_count(), "gpu": _gpu_name() if device == "cuda" else None,
            "python": platform.python_version(), "torch": _version("torch"),
            "fairseq": _version("fairseq-fixed") or _version("fairseq"),
            "commit": _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ")}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> List[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].split()
    return []


def _gpu_name() -> Optional[str]:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a report never fails for want of a GPU's name
        return None


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    """HEAD of this checkout, with "-dirty" where tracked files differ from it."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# -- a study's small files ---------------------------------------------------------------
def save_series(series: Series, path: Path) -> None:
    """The records of one model's log, as ``load_series`` reads them back."""
    data = {"setup": series.setup, "done_seconds": series.done_seconds,
            "said_no_peer": series.said_no_peer, "inner": series.inner,
            "epochs": series.epochs, "valid": series.valid}
    atomic_write(path, lambda f: f.write(json.dumps(data, separators=(",", ":")).encode()))


def export(runs: Path, dest: Path) -> List[Path]:
    """Copy the small files of every run under ``runs`` that has a ``study.json`` into
    ``dest`` (the same relative paths); returns the runs exported."""
    runs, dest = Path(runs), Path(dest)
    return [dest / meta.parent.relative_to(runs) for meta in sorted(runs.rglob("study.json"))
            if export_run(meta.parent, dest / meta.parent.relative_to(runs))]


def export_runs(runs: Sequence[Path], dest: Path) -> List[Path]:
    """Copy the small files of the run folders ``runs`` (not a study's: the demo's) into
    ``dest``/NAME, NAME each folder's own; returns the runs exported."""
    targets = [(Path(run), Path(dest) / Path(run).resolve().name) for run in runs]
    return [target for run, target in targets if export_run(run, target)]


def logged_models(run: Path) -> List[Path]:
    """The folders of a run that hold fairseq's train.log: the run itself, or its model*/."""
    if (run / "train.log").is_file():
        return [run]
    if not run.is_dir():
        return []
    return sorted(d for d in run.iterdir() if d.is_dir() and MODEL_DIR.match(d.name) and (d / "train.log").is_file())


def export_run(run: Path, target: Path) -> bool:
    """One run's small files into ``target``: False, and nothing written, for a folder
    without a train.log or model*/train.log."""
    models = logged_models(run)
    if not models:
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (run / name).is_file():
            shutil.copyfile(run / name, target / name)
    for model in models:
        out = target / model.relative_to(run)
        out.mkdir(parents=True, exist_ok=True)
        log = model / "train.log"
        save_series(parse_log(log.read_text(errors="replace"), model.name, log), out / SERIES_FILE)
        for name in KEPT_PER_MODEL:
            if (model / name).is_file():
                shutil.copyfile(model / name, out / name)
    if (run / ENSEMBLE).is_file():  # the demo's pair, scored as an ensemble
        (target / ENSEMBLE).parent.mkdir(exist_ok=True)
        shutil.copyfile(run / ENSEMBLE, target / ENSEMBLE)
    return True
