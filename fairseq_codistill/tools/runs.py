"""Reading runs: fairseq-train's logs (``--log-format json``) and eval.json files, one
``Series`` per model; what the report (``fairseq-codistill-report``) and the study's summary
(``--study``) both read.

A run directory holds ``train.log`` (one model) or ``model*/train.log`` (models started by
fairseq-codistill-launch, one series each, labelled ``RUN/model{i}``), finished or still
running; ``eval.json`` and ``eval-best.json`` beside a log (and ``RUN_DIR/ensemble/eval.json``)
add BLEU and chrF (``fairseq_codistill.tools.evaluate``).
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fairseq_codistill.tools import logs

PARAMS = re.compile(r"num\. (?:shared )?model params: ([\d,]+)")
DONE = re.compile(r"done training in ([\d.]+) seconds")
CONFIG_INT = r"'{}': (\d+)"
CRITERION = re.compile(r"'criterion': \{'_name': '(\w+)'([^}]*)\}")
LABEL_SMOOTHING = re.compile(r"'label_smoothing': ([\d.e-]+)")
MODEL_DIR = re.compile(r"^model(\d+)$")
# A log's records without the log (fairseq_codistill.tools.results keeps them in results/).
SERIES_FILE = "train.json"


@dataclass
class Series:
    """One model's training curve, read from its train.log (and its eval.json)."""

    label: str
    path: Optional[Path] = None
    inner: List[Dict[str, float]] = field(default_factory=list)   # train_inner records
    epochs: List[Dict[str, float]] = field(default_factory=list)  # train (epoch) records
    valid: List[Dict[str, float]] = field(default_factory=list)   # valid records
    setup: Dict[str, object] = field(default_factory=dict)        # params, criterion ...
    done_seconds: Optional[float] = None
    eval: Optional[dict] = None  # of checkpoint_last.pt (eval.json)
    eval_best: Optional[dict] = None  # of checkpoint_best.pt (eval-best.json), where evaluated
    kind: Optional[str] = None  # "codistill" or another kind of run, when known from elsewhere
    said_no_peer: bool = False  # its log says it trained without any peer
    # when each restart began, in seconds after the launch (from launch.json, where known):
    # fairseq's clock and its "done training in" start again with each attempt
    restarted: List[float] = field(default_factory=list)

    @property
    def without_peers(self) -> bool:
        """A codistilled model that never had a peer: its log says so at the end, or it
        finished with num_peers 0 in every record (a run in progress may not have read yet)."""
        if self.said_no_peer:
            return True
        return (self.codistilled and self.done_seconds is not None and bool(self.inner)
                and all(not r.get("num_peers") for r in self.inner))

    @property
    def codistilled(self) -> bool:
        if self.kind is not None:
            return self.kind == "codistill"
        return any("codistill_loss" in r for r in self.inner)


# -- reading logs ------------------------------------------------------------------------
def parse_log(text: str, label: str, path: Optional[Path] = None) -> Series:
    """All JSON records of one fairseq-train log; torn or foreign lines are skipped."""
    series = Series(label, path)
    by_tag = {"train_inner": series.inner, "train": series.epochs, "valid": series.valid}
    for line in text.splitlines():
        parsed = logs.parse_line(line)
        if parsed is not None:
            by_tag[parsed[0]].append(parsed[1])
            continue
        if "model params" in line and "params" not in series.setup:
            found = PARAMS.search(line)
            if found:
                series.setup["params"] = int(found.group(1).replace(",", ""))
        elif "'distributed_training'" in line and "world_size" not in series.setup:
            _parse_config(line, series.setup)
        elif "trained without any peer" in line:
            series.said_no_peer = True
        elif "done training in" in line:
            found = DONE.search(line)
            series.done_seconds = float(found.group(1)) if found else None
    return series


def _parse_config(line: str, setup: dict) -> None:
    """The few settings the report shows, from fairseq's config dump at start-up."""
    for key, name in (("distributed_world_size", "world_size"), ("max_tokens", "max_tokens")):
        found = re.search(CONFIG_INT.format(key), line)
        if found:
            setup[name] = int(found.group(1))
    found = re.search(r"'update_freq': \[(\d+)\]", line)
    setup["update_freq"] = int(found.group(1)) if found else 1
    found = CRITERION.search(line)
    if found:
        setup["criterion"] = found.group(1)
        smoothing = LABEL_SMOOTHING.search(found.group(2))
        setup["label_smoothing"] = float(smoothing.group(1)) if smoothing else 0.0


def _read_eval(directory: Path, name: str = "eval.json") -> Optional[dict]:
    path = directory / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def load_run(run_dir: Path) -> List[Series]:
    """The series of one run directory: its train.log, or one per model*/train.log, plus
    an eval-only ``ensemble`` row when RUN_DIR/ensemble/eval.json exists."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    if _has_log(run_dir):
        logs = [(name, run_dir)]
    else:
        models = sorted((int(MODEL_DIR.match(d.name).group(1)), d) for d in run_dir.iterdir()
                        if d.is_dir() and MODEL_DIR.match(d.name) and _has_log(d))
        logs = [(f"{name}/{d.name}", d) for _, d in models]
    if not logs:
        raise FileNotFoundError(f"{run_dir}: no train.log and no model*/train.log (a run "
                                "directory of fairseq-train --log-format json output)")
    series = []
    for label, directory in logs:
        log = directory / "train.log"
        s = parse_log(log.read_text(errors="replace"), label, log) if log.is_file() \
            else _load_series(directory / SERIES_FILE, label)
        s.eval = _read_eval(directory)
        s.eval_best = _read_eval(directory, "eval-best.json")
        series.append(s)
    ensemble = _read_eval(run_dir / "ensemble")
    if ensemble is not None:
        series.append(Series(f"{name}/ensemble", run_dir / "ensemble", eval=ensemble))
    return series


def _has_log(directory: Path) -> bool:
    return (directory / "train.log").is_file() or (directory / SERIES_FILE).is_file()


def _load_series(path: Path, label: str) -> Series:
    """A model's records as ``fairseq_codistill.tools.results.save_series`` kept them."""
    data = json.loads(path.read_text())
    return Series(label, path, inner=data["inner"], epochs=data["epochs"], valid=data["valid"],
                  setup=data["setup"], done_seconds=data["done_seconds"],
                  said_no_peer=data["said_no_peer"])


def curve(records: Sequence[dict], key: str, x: str = "num_updates"):
    """(updates, values) of ``key``, one point per update: a job restarted from its
    checkpoint logs some updates twice, and the later record wins."""
    points = {}
    for r in records:
        if isinstance(r.get(key), float) and isinstance(r.get(x), float):
            points[r[x]] = r[key]
    xs = sorted(points)
    return xs, [points[u] for u in xs]


def last_train(series: Series) -> Optional[dict]:
    """The newest training average: the last epoch's, or the last log interval's when the
    run is in the middle of an epoch (or the epoch record is not written yet)."""
    candidates = [r for r in (series.epochs[-1:] + series.inner[-1:]) if "num_updates" in r]
    return max(candidates, key=lambda r: r["num_updates"]) if candidates else None


def wall_seconds(series: Series) -> Optional[float]:
    if series.done_seconds is not None:
        return series.done_seconds
    walls = [r["wall"] for r in series.inner + series.epochs if isinstance(r.get("wall"), float)]
    return max(walls) if walls else None


def updates_done(series: Series) -> Optional[float]:
    values = [r["num_updates"] for r in series.inner + series.epochs + series.valid
              if isinstance(r.get("num_updates"), float)]
    return max(values) if values else None


def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
