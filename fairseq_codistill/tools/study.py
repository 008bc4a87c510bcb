"""A study's summary: each configuration's mean and spread over seeds, its curves, the
paper's claims judged in validation NLL and in BLEU, and the methods that send the same
bytes side by side.

A study directory holds one folder per run (any depth), each with a ``study.json`` that
``recipes/study.sh`` writes beside the run's ``train.log`` or ``model*/train.log``, and
``eval.json`` / ``eval-best.json`` beside each log (BLEU and chrF of checkpoint_last.pt
and of checkpoint_best.pt, the best by validation NLL):

    {"group": "codistill-a0.1-k40", "kind": "codistill", "seed": 1, "regime": true,
     "lang_pair": "de-en", "updates": 480, "tokens": 1024, "fraction": 0.0625, "layers": 3,
     "dropout": 0.1, "alpha": 0.1, "gamma": 1.1, "interval": 40, "burn_in": 0, "loss": "mse",
     "snapshot": "fp16", "peer_layers": 3}

``kind`` is ``baseline`` (all-reduce), ``control`` (one model alone), ``codistill``,
``localsgd`` or ``diloco`` (a pair; both models count as samples). Runs of one *setting*
(language pair, updates, tokens per worker, data fraction, layers) are compared with each
other; the run marked ``regime`` is the configuration the claims are about, and in every
other setting the codistilled line with the regime's other settings stands for it.
Written by ``fairseq-codistill-report --study DIR``.
"""
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from fairseq_codistill.tools.runs import Series, curve, human_bytes, human_seconds, load_run, wall_seconds

KINDS = ("baseline", "control", "codistill", "localsgd", "diloco", "kd")
PAIRS = ("codistill", "localsgd", "diloco")
# What makes runs comparable: the same data, model and budget of updates and tokens.
# dim: a model width other than the regime's (none: the regime's)
SETTING = ("lang_pair", "updates", "tokens", "fraction", "layers", "dim")
# Parameters that tell two configurations of one setting apart, in the order of the table.
KNOBS = ("dropout", "alpha", "gamma", "interval", "burn_in", "loss", "snapshot", "peer_layers", "peer_dim",
         "outer_lr", "outer_momentum")
# A knob a run's study.json may lack (written before the knob existed): its value then.
KNOB_DEFAULTS = {"codistill": {"snapshot": "fp16"}, "diloco": {"outer_lr": 0.7, "outer_momentum": 0.9}}
# The settings of the line that stands for a method: today's defaults (DiLoCo's outer
# momentum 0.5 since its paper's 0.9 failed in the study's short runs).
STAND_IN = {"diloco": {"outer_lr": 0.7, "outer_momentum": 0.5}}
# The regime's knobs that a longer run changes with it (gamma follows the run length).
FOLLOWS_SETTING = ("gamma",)


@dataclass
class Stat:
    """Mean and spread of one figure over a group's samples (both models of each pair)."""

    values: List[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        """max - min: with 2-3 seeds, more telling (and harsher) than a standard deviation."""
        return max(self.values) - min(self.values)

    def format(self, digits: int = 3) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.spread / 2:.{digits}f}"

    def __str__(self) -> str:
        return self.format()


@dataclass
class Group:
    name: str
    kind: str
    params: dict
    setting: tuple
    regime: bool = False
    runs: Dict[int, List[Series]] = field(default_factory=dict)  # seed -> its model(s)
    metas: Dict[int, dict] = field(default_factory=dict)  # seed -> its study.json

    @property
    def timed(self) -> bool:
        """Trained for a wall-clock budget (a scenario's line), not a number of updates."""
        return any("budget" in m for m in self.metas.values())

    @property
    def models(self) -> List[Series]:
        return [s for seed in sorted(self.runs) for s in self.runs[seed]]

    def stat(self, figure, model: Optional[int] = None) -> Optional[Stat]:
        """``figure`` over the models (only model ``model`` of each pair, if given)."""
        models = self.models if model is None else [
            runs[model] for _, runs in sorted(self.runs.items()) if len(runs) > model]
        values = [v for v in (figure(s) for s in models) if v is not None]
        return Stat(values) if values else None

    def model(self, i: int = 0) -> Tuple[Optional[int], Optional[int]]:
        """(layers, width) of model ``i``: 0, the line's (a lone model, a pair's model 0, a kd
        student); 1, a pair's model 1 or a kd teacher. A width of None is the regime's."""
        if i == 0:
            return self.params.get("layers"), self.params.get("dim")
        return self.params.get("peer_layers", self.params.get("layers")), self.params.get("peer_dim")

    @property
    def heterogeneous(self) -> bool:
        return self.kind == "codistill" and self.model(1) != self.model(0)


# -- figures of one model ----------------------------------------------------------------
def _last(records: Sequence[dict], key: str) -> Optional[float]:
    values = curve(records, key)[1]
    return values[-1] if values else None


def final_valid(series: Series) -> Optional[float]:
    """Validation NLL at the last validation (all runs of a setting stop at the same update)."""
    return _last(series.valid, "nll_loss")


def best_valid(series: Series) -> Optional[float]:
    """The lowest validation NLL: that of checkpoint_best.pt."""
    values = curve(series.valid, "nll_loss")[1]
    return min(values) if values else None


def final_train(series: Series) -> Optional[float]:
    return _last(series.inner, "nll_loss")


def final_param_dist(series: Series) -> Optional[float]:
    return _last(series.inner, "param_dist")


def score(metric: str, checkpoint: str) -> Callable[[Series], Optional[float]]:
    """BLEU or chrF (``metric`` "bleu", "chrf") of the ``checkpoint`` "last" or "best"."""
    def figure(series: Series) -> Optional[float]:
        result = series.eval if checkpoint == "last" else series.eval_best
        value = (result or {}).get(metric)
        return float(value) if value is not None else None

    figure.__name__ = f"{metric}_{checkpoint}"
    return figure


def bytes_per_update(series: Series) -> Optional[float]:
    """Bytes this model received from the others per update: a pair's snapshots as read
    (``codistill_bytes``); 0 for a model alone. All-reduce: see ``allreduce_bytes``."""
    received = _last(series.inner, "codistill_bytes")
    updates = _last(series.inner, "num_updates")
    return received / updates if received is not None and updates else None


def allreduce_bytes(series: Series, workers: int = 2) -> Optional[float]:
    """A ring all-reduce of fp32 gradients over ``workers``: 2 (W-1)/W x 4 bytes per
    parameter per update, received by each worker."""
    params = series.setup.get("params")
    return 2 * (workers - 1) / workers * 4 * params if params else None


# -- loading -----------------------------------------------------------------------------
def load_study(root: Path) -> List[Group]:
    # a line's name and setting: the scenarios run lines of one name on each language pair
    groups: Dict[tuple, Group] = {}
    root = Path(root)
    for meta_path in sorted(root.rglob("study.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") not in KINDS:
            raise ValueError(f"{meta_path}: kind must be one of {KINDS} (got {meta.get('kind')!r})")
        try:
            series = [s for s in load_run(meta_path.parent) if s.path is not None and s.valid]
        except FileNotFoundError:
            continue  # a run that has not written its log yet
        if not series:
            continue
        setting = tuple(meta.get(k) for k in SETTING)
        name, key, seed = meta["group"], (meta["group"], setting), int(meta["seed"])
        if key in groups and seed in groups[key].runs:
            # the same line and seed from another study run (the W line each scenarios'
            # run measures again on its machine): kept apart, named by its folder
            source = meta_path.parent.parent.parent.relative_to(root).as_posix()
            name, key = f"{name} ({source})", key + (source,)
        group = groups.setdefault(key, Group(name, meta["kind"], _params(meta), setting))
        group.regime = group.regime or bool(meta.get("regime"))
        group.runs[seed] = series
        group.metas[seed] = meta
        launch = meta_path.parent / "launch.json"
        if launch.is_file():
            models = json.loads(launch.read_text())
            for i, s in enumerate(series):  # the all-reduce job is model 0
                s.restarted = restarts(models.get(f"model{i}", {}))
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(groups.values(), key=lambda g: (order[g.kind], not g.regime, g.name))


def restarts(launch: dict) -> List[float]:
    """Seconds after the launch at which a model (its entry in launch.json) started again,
    after a failure or a preemption (launch.json recorded only preemptions' restarts before
    it recorded every attempt's start)."""
    if "started_at" in launch:
        return launch["started_at"][1:]
    return [p["restarted_at"] for p in launch.get("preemptions", []) if p.get("restarted_at") is not None]


def _params(meta: dict) -> dict:
    params = {k: meta[k] for k in KNOBS + SETTING if k in meta}
    return {**KNOB_DEFAULTS.get(meta["kind"], {}), **params}


# -- who compares with whom ----------------------------------------------------------------
def regime_of(groups: Sequence[Group]) -> Optional[Group]:
    return next((g for g in groups if g.kind == "codistill" and g.regime), None)


def _same_knobs(a: Group, b: Group, ignore: Tuple[str, ...] = ()) -> bool:
    return all(a.params.get(k) == b.params.get(k) for k in KNOBS if k not in ignore)


def stand_in(groups: Sequence[Group], kind: str, setting: tuple, regime: Group) -> Optional[Group]:
    """The line of ``kind`` in ``setting`` that stands for the regime there: a codistilled
    pair with the regime's other knobs, a baseline, the LocalSGD or DiLoCo pair at the
    regime's interval in fp16."""
    found = [g for g in groups if g.kind == kind and g.setting == setting]
    if kind == "codistill":
        found = [g for g in found if g is regime or (
            g.setting != regime.setting and _same_knobs(g, regime, FOLLOWS_SETTING))]
    elif kind in ("localsgd", "diloco"):
        found = [g for g in found if _averaging_like(g, regime)
                 and all(g.params.get(k) == v for k, v in STAND_IN.get(kind, {}).items())]
    elif kind == "baseline":
        found = [g for g in found if g.params.get("dropout") == regime.params.get("dropout")]
    return found[0] if found else None


def _averaging_like(group: Group, regime: Group) -> bool:
    """A LocalSGD or DiLoCo pair at the regime's interval, dropout and snapshot dtype."""
    return all(group.params.get(k, "fp16" if k == "snapshot" else None) ==
               regime.params.get(k, "fp16" if k == "snapshot" else None)
               for k in ("interval", "snapshot", "dropout"))


def best_control(groups: Sequence[Group], setting: tuple, figure, lower_is_better: bool,
                 model=None) -> Optional[Group]:
    """The control of ``setting`` (of another ``model``, (layers, width), if given) best in
    ``figure``: the lone model at its best regularisation, so no gain comes from a weakened
    control."""
    found = [(g, g.stat(figure)) for g in groups if g.kind == "control" and g.setting[:4] == setting[:4]
             and g.model() == (setting[4:6] if model is None else model)]
    found = [(g, s) for g, s in found if s is not None]
    if not found:
        return None
    pick = min if lower_is_better else max
    return pick(found, key=lambda gs: gs[1].mean)[0]


def settings_of(groups: Sequence[Group], regime: Group) -> List[tuple]:
    """Every setting where the regime has a stand-in, the regime's first."""
    out = [regime.setting]
    for g in groups:
        if g.setting not in out and stand_in(groups, "codistill", g.setting, regime) is not None:
            out.append(g.setting)
    return out


def describe_setting(setting: tuple, regime: Group) -> str:
    """'the regime' or how a setting differs from it ('updates 960')."""
    diffs = [f"{k} {v}" for k, v, r in zip(SETTING, setting, regime.setting) if v != r]
    return ", ".join(diffs) or "the regime"


# -- the claims --------------------------------------------------------------------------
BEST_NLL, BEST_BLEU = best_valid, score("bleu", "best")


@dataclass
class Claim:
    setting: str
    claim: str
    nll: str  # what was measured in NLL ...
    nll_verdict: str
    bleu: str  # ... and in BLEU
    bleu_verdict: str


def _gap(a: Stat, b: Stat) -> Tuple[float, float]:
    """(mean of a - mean of b, the larger of the two spreads)."""
    return a.mean - b.mean, max(a.spread, b.spread)


def _compare(a: Optional[Stat], b: Optional[Stat], holds: Callable[[float, float], bool],
             digits: int, label: str = "") -> Tuple[str, str]:
    """(measured, verdict) of a claim that ``holds(mean a - mean b, spread)``."""
    if a is None or b is None:
        return "-", "not measured"
    diff, spread = _gap(a, b)
    measured = (f"{a.format(digits)} vs {b.format(digits)}{label}: {diff:+.{digits}f} "
                f"(spread {spread:.{digits}f})")
    return measured, "reproduced" if holds(diff, spread) else "not reproduced"


def claims(groups: Sequence[Group]) -> List[Claim]:
    """The paper's five claims about the regime, in NLL and in BLEU of the best checkpoints
    (what a fairseq user keeps), in every setting where the regime has a stand-in."""
    regime = regime_of(groups)
    if regime is None:
        return []
    out = []
    for setting in settings_of(groups, regime):
        here = describe_setting(setting, regime)
        line = stand_in(groups, "codistill", setting, regime)
        base = stand_in(groups, "baseline", setting, regime)
        if base is not None:
            nll = _compare(line.stat(BEST_NLL), base.stat(BEST_NLL), lambda d, s: d <= s, 3)
            bleu = _compare(line.stat(BEST_BLEU), base.stat(BEST_BLEU), lambda d, s: -d <= s, 2)
            out.append(Claim(here, "1. two codistilled models (batch B) match all-reduce (2B) "
                             "at equal updates (its best checkpoint)", *nll, *bleu))
        controls = [best_control(groups, setting, BEST_NLL, True),
                    best_control(groups, setting, BEST_BLEU, False)]
        if all(c is not None for c in controls):
            nll = _compare(line.stat(BEST_NLL), controls[0].stat(BEST_NLL), lambda d, s: -d > s, 3,
                           f" ({controls[0].name})")
            bleu = _compare(line.stat(BEST_BLEU), controls[1].stat(BEST_BLEU), lambda d, s: d > s, 2,
                            f" ({controls[1].name})")
            out.append(Claim(here, "2. a codistilled model beats the same model trained alone",
                             *nll, *bleu))
        if line is regime and all(c is not None for c in controls):
            out += _interval_claim(groups, regime, controls, here)
            out += _schedule_claim(groups, regime, here)
        if line is regime:
            out += _distance_claim(groups, regime, base, controls[0], here)
    return out


def _differs_only_in(group: Group, regime: Group, knob: str) -> bool:
    return group.kind == "codistill" and group.setting == regime.setting and \
        group.params.get(knob) != regime.params.get(knob) and _same_knobs(group, regime, (knob,))


def _interval_claim(groups, regime, controls, here) -> List[Claim]:
    variants = [g for g in groups if _differs_only_in(g, regime, "interval")]
    if not variants:
        return []
    cells = []
    for figure, control, sign, digits in ((BEST_NLL, controls[0], -1, 3), (BEST_BLEU, controls[1], 1, 2)):
        parts, beaten, measured = [], 0, 0
        for g in sorted(variants + [regime], key=lambda g: g.params["interval"]):
            a, b = g.stat(figure), control.stat(figure)
            if a is None or b is None:
                continue
            diff, spread = _gap(a, b)
            measured += 1
            beaten += sign * diff > spread
            parts.append(f"{g.params['interval'] / regime.params['interval']:g}x: {diff:+.{digits}f}")
        if not measured:
            cells += ["-", "not measured"]
            continue
        cells += [f"minus {control.name}'s: " + ", ".join(parts),
                  "reproduced" if beaten == measured == len(variants) + 1 else
                  f"not reproduced ({beaten} of {measured} beat the control)"]
    return [Claim(here, "3. it holds for a snapshot interval 0.5x to 4x the default", *cells)]


def _schedule_claim(groups, regime, here) -> List[Claim]:
    constant = [g for g in groups if _differs_only_in(g, regime, "gamma") and g.params.get("gamma") == 1]
    if not constant or regime.params.get("gamma", 1) == 1:
        return []
    c = constant[0]
    nll = _compare(regime.stat(BEST_NLL), c.stat(BEST_NLL), lambda d, s: d <= s, 3, " (constant)")
    bleu = _compare(regime.stat(BEST_BLEU), c.stat(BEST_BLEU), lambda d, s: -d <= s, 2, " (constant)")
    return [Claim(here, "4. alpha growing exponentially does at least as well as a constant alpha",
                  *nll, *bleu)]


def _distance_claim(groups, regime, base, control, here) -> List[Claim]:
    # The paper's Fig. 1c compares with all-reduce; the control is shown beside it.
    reference = base or control
    if reference is None:
        return []
    a, b = regime.stat(final_param_dist), reference.stat(final_param_dist)
    if a is None or b is None:
        return []
    measured, verdict = _compare(a, b, lambda d, s: -d > s, 3, f" ({reference.name})")
    alone = control.stat(final_param_dist) if control is not None and reference is not control else None
    if alone is not None:
        measured += f"; alone: {alone}"
    return [Claim(here, "5. the weights stay closer to their initial values than all-reduce's "
                  "(||theta - theta_0||)", measured, verdict, "-", "-")]


# -- the methods at equal bytes ------------------------------------------------------------
METHOD_ROWS = (("baseline", "all-reduce (batch 2B)", "every update", "no"),
               ("localsgd", "LocalSGD", "at every averaging", "no"),
               ("diloco", "DiLoCo", "at every averaging", "no"),
               ("codistill", "codistillation", "never (a stale peer)", "yes"),
               ("control", "one model alone", "-", "-"))


def methods(groups: Sequence[Group]) -> Dict[str, List[List[str]]]:
    """Per setting: one row per method (the stand-ins of the regime, the best control),
    with the best checkpoints' NLL, BLEU and chrF and the bytes each model receives."""
    regime = regime_of(groups)
    if regime is None:
        return {}
    out = {}
    for setting in settings_of(groups, regime):
        rows = []
        for kind, label, waits, differ in METHOD_ROWS:
            g = (best_control(groups, setting, BEST_NLL, True) if kind == "control"
                 else stand_in(groups, kind, setting, regime))
            if g is None:
                continue
            shown = [g]
            if kind == "diloco":  # and its variants in the outer optimiser's settings
                shown += [v for v in groups if v.kind == kind and v.setting == setting and v is not g
                          and _averaging_like(v, regime)]
            for v in shown:
                if kind == "baseline":
                    sent = v.stat(allreduce_bytes)
                elif kind == "control":
                    sent = Stat([0.0])
                else:
                    sent = v.stat(bytes_per_update)
                outer = "" if v is g or kind != "diloco" else \
                    f" (outer lr {v.params['outer_lr']}, momentum {v.params['outer_momentum']})"
                rows.append([f"{label}{outer}: {v.name}", _cell(v.stat(BEST_NLL)),
                             _cell(v.stat(BEST_BLEU), 2), _cell(v.stat(score("chrf", "best")), 2),
                             human_bytes(sent.mean) if sent else "-", waits, differ])
        out[describe_setting(setting, regime)] = rows
    return out


def size(model: Tuple[Optional[int], Optional[int]]) -> str:
    """'3+3 layers', or '1+1 layers of width 64' for a width other than the regime's."""
    layers, width = model
    return f"{layers}+{layers} layers" + (f" of width {width}" if width else "")


def heterogeneous(groups: Sequence[Group]) -> List[List[str]]:
    """Each model of a heterogeneous pair against the lone model of its own size."""
    rows = []
    for g in (g for g in groups if g.heterogeneous):
        for i, model in enumerate((g.model(0), g.model(1))):
            for figure, lower, digits in ((BEST_NLL, True, 3), (BEST_BLEU, False, 2)):
                control = best_control(groups, g.setting, figure, lower, model=model)
                a = g.stat(figure, model=i)
                b = control.stat(figure) if control is not None else None
                measured, verdict = _compare(a, b, (lambda d, s: -d > s) if lower else (lambda d, s: d > s),
                                             digits, f" ({control.name})" if control else "")
                rows.append([f"{g.name}/model{i} ({size(model)})",
                             "NLL" if lower else "BLEU", measured,
                             "gains" if verdict == "reproduced" else "no gain beyond the spread"
                             if verdict == "not reproduced" else verdict])
    return rows


# -- the report --------------------------------------------------------------------------
TABLE = [("val NLL", final_valid, 3), ("best val NLL", best_valid, 3),
         ("BLEU", score("bleu", "last"), 2), ("BLEU (best)", score("bleu", "best"), 2),
         ("chrF", score("chrf", "last"), 2), ("chrF (best)", score("chrf", "best"), 2),
         ("train NLL", final_train, 3), ("param_dist", final_param_dist, 1)]


def _cell(stat: Optional[Stat], digits: int = 3) -> str:
    return stat.format(digits) if stat is not None else "-"


def _knobs(group: Group, regime: Optional[Group]) -> str:
    """How a configuration differs from the regime (all its knobs without a regime)."""
    p = group.params
    if regime is None:
        return ", ".join(f"{k} {p[k]}" for k in KNOBS + SETTING if k in p)
    keys = SETTING + (KNOBS if group.kind in PAIRS else ("dropout",))
    # a kind's own knobs at today's defaults
    reference = {**regime.params, **KNOB_DEFAULTS.get(group.kind, {}), **STAND_IN.get(group.kind, {})}
    diffs = [f"{k} {p[k]}" for k in keys if k in p and p[k] != reference.get(k)
             and not (k == "gamma" and group.setting != regime.setting)]
    return ", ".join(diffs) or "the regime's"


def study_table(groups: Sequence[Group]) -> str:
    regime = regime_of(groups)
    header = (["configuration", "kind", "settings", "seeds", "models"] + [t for t, _, _ in TABLE]
              + ["wall / model"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for g in groups:
        cells = [g.name + (" **(regime)**" if g.regime else ""), g.kind, _knobs(g, regime),
                 ",".join(str(s) for s in sorted(g.runs)), str(len(g.models))]
        cells += [_cell(g.stat(f), digits) for _, f, digits in TABLE]
        wall = g.stat(wall_seconds)
        cells.append(human_seconds(wall.mean) if wall else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


PLOT_KINDS = {"baseline": dict(color="k"), "control": dict(color="0.5"),
              "codistill": dict(color="C3", linestyle="--"), "localsgd": dict(color="C0", linestyle="-."),
              "diloco": dict(color="C2", linestyle="-."), "kd": dict(color="C4", linestyle=":")}


def plot_study(out: Path, groups: Sequence[Group]) -> List[str]:
    """The regime's setting: the baseline, every control, the regime and the averaging
    methods, the mean over models and seeds as a line, their range as a band. Validation
    NLL over the run and over its second half (zoomed), and the distance from the initial
    weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regime = regime_of(groups)
    setting = regime.setting if regime is not None else None
    shown = [g for g in groups if g.setting == setting and (
        g.kind == "control" or g is regime
        or (regime is not None and stand_in(groups, g.kind, setting, regime) is g))]
    figures = {"study_valid.png": [("valid", "nll_loss", "validation NLL (base 2)", False),
                                   ("valid", "nll_loss", "validation NLL, second half", True)],
               "study_param_dist.png": [("inner", "param_dist", "||theta - theta_0||_2", False)]}
    written = []
    for name, panels in figures.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (attr, key, ylabel, zoom) in zip(axes[0], panels):
            for i, g in enumerate(shown):
                xs, low, mean, high = _band(g, attr, key)
                if zoom and xs:
                    keep = [j for j, x in enumerate(xs) if x >= xs[-1] / 2]
                    xs, low, mean, high = ([v[j] for j in keep] for v in (xs, low, mean, high))
                if not xs:
                    continue
                style = dict(PLOT_KINDS[g.kind])
                if g.kind == "control" and i and shown[i - 1].kind == "control":
                    style["linestyle"] = ":"  # a second control (another dropout)
                ax.plot(xs, mean, label=f"{g.name} (n={len(g.models)})", marker="o", markersize=3, **style)
                ax.fill_between(xs, low, high, color=style["color"], alpha=0.15)
            ax.set_xlabel("updates")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        fig.suptitle("mean over seeds (both models of a pair), band: min to max")
        fig.tight_layout()
        if any(ax.lines for ax in axes[0]):
            fig.savefig(out / name, dpi=90)
            written.append(name)
        plt.close(fig)
    return written


def _band(group: Group, attr: str, key: str):
    """(updates, min, mean, max) of ``key`` over the group's models, at the updates all of
    them logged."""
    curves = [dict(zip(*curve(getattr(s, attr), key))) for s in group.models]
    xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    values = [[c[x] for c in curves] for x in xs]
    return (xs, [min(v) for v in values], [statistics.fmean(v) for v in values],
            [max(v) for v in values])


def write_study_report(out: Path, groups: Sequence[Group]) -> str:
    """OUT/study.md and its plots: the lines trained for a number of updates (the map),
    then those trained for a wall-clock budget (the scenarios)."""
    from fairseq_codistill.tools import scenarios

    out.mkdir(parents=True, exist_ok=True)
    everything, groups = groups, [g for g in groups if not g.timed]
    lines = ["# Codistillation study", ""]
    lines += scenarios.report(out, everything)
    if not groups:
        return _write(out, lines)
    lines += ["## The map: every line at the same number of updates", "", study_table(groups), "",
             "- *val NLL*: validation NLL per target token (base 2) at the last validation, "
             "the same update for every run of a setting; *best val NLL*: the lowest validation "
             "of the run, that of checkpoint_best.pt; *BLEU*, *chrF*: sacrebleu on the test "
             "split (beam 4) of checkpoint_last.pt and, *(best)*, of checkpoint_best.pt; "
             "*param_dist*: distance of the weights from their initial values at the end.",
             "- Each cell is the mean ± half the spread (max - min) over the samples: every seed "
             "of a baseline or control, both models of every seed of a pair. NLL compares only "
             "within one data fraction (each has its own sentencepiece vocabulary); BLEU and "
             "chrF compare across.", ""]
    found = claims(groups)
    if found:
        lines += ["## The paper's claims at this scale", ""]
        lines += _markdown(["setting", "claim", "NLL (best checkpoints)", "in NLL",
                            "BLEU (best checkpoints)", "in BLEU"],
                           [[c.setting, c.claim, c.nll, c.nll_verdict, c.bleu, c.bleu_verdict]
                            for c in found])
        lines += ["", "A gap counts when it is larger than the larger spread (max - min) of the "
                  "two groups compared; the control is the control configuration of the setting "
                  "best in the measure judged (no gain from a weakened control).", ""]
    table = methods(groups)
    if table:
        lines += ["## The methods at equal bytes", ""]
        for setting, rows in table.items():
            lines += [f"**{setting}**", ""]
            lines += _markdown(["method", "val NLL (best)", "BLEU (best)", "chrF (best)",
                                "bytes received / model / update", "waits for the others",
                                "models may differ"], rows)
            lines.append("")
        lines += ["All-reduce's bytes are a ring all-reduce of fp32 gradients between its 2 "
                  "workers; a pair's are the snapshots each model read, as logged.", ""]
    hetero = heterogeneous(groups)
    if hetero:
        lines += ["## Heterogeneous pairs: what each model gains", ""]
        lines += _markdown(["model", "measure", "measured (best checkpoints)", "verdict"], hetero)
        lines.append("")
    for name in plot_study(out, groups):
        lines += [f"![{name}]({name})", ""]
    return _write(out, lines)


def _write(out: Path, lines: List[str]) -> str:
    text = "\n".join(lines)
    (out / "study.md").write_text(text)
    return text


def regime_wall(run_dir: Path) -> float:
    """The wall time of one run: its slowest model's, from start to the end of training
    (fairseq's "done training in" seconds). The scenarios' budget W is the regime's."""
    walls = [wall_seconds(s) for s in load_run(run_dir) if s.path is not None]
    walls = [w for w in walls if w is not None]
    if not walls:
        raise ValueError(f"{run_dir}: no finished model to time")
    return max(walls)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the wall time of a finished run (recipes/study.sh's W)")
    parser.add_argument("--wall", type=Path, required=True, metavar="RUN_DIR")
    try:
        print(f"{regime_wall(parser.parse_args().wall):.1f}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"study --wall: {e}")
