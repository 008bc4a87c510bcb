"""A study's summary: each configuration's mean and spread over seeds, its curves, and
the paper's five claims measured against the all-reduce baseline and the lone control.

A study directory holds one folder per run (any depth), each with a ``study.json`` that
``recipes/study.sh`` writes beside the run's ``train.log`` or ``model*/train.log``:

    {"group": "codistill-a0.1-g1.1-k40", "kind": "codistill", "seed": 1, "regime": true,
     "dropout": 0.1, "alpha": 0.1, "gamma": 1.1, "interval": 40, "burn_in": 0, "loss": "mse"}

``kind`` is ``baseline`` (all-reduce), ``control`` (one model alone) or ``codistill`` (a
pair; both models count as samples). The run marked ``regime`` is the configuration the
claims are about. Written by ``fairseq-codistill-report --study DIR``.
"""
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_codistill.report import Series, curve, human_seconds, load_run, wall_seconds

KINDS = ("baseline", "control", "codistill", "localsgd", "diloco")
# Parameters that tell two codistill configurations apart, in the order of the table.
KNOBS = ("dropout", "alpha", "gamma", "interval", "burn_in", "loss", "snapshot")
# A knob a run's study.json may lack (written before the knob existed): its value then.
KNOB_DEFAULTS = {"snapshot": "fp16"}


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

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.values[0]:.3f}"
        return f"{self.mean:.3f} ± {self.spread / 2:.3f}"


@dataclass
class Group:
    name: str
    kind: str
    params: dict
    regime: bool = False
    runs: Dict[int, List[Series]] = field(default_factory=dict)  # seed -> its model(s)

    @property
    def models(self) -> List[Series]:
        return [s for seed in sorted(self.runs) for s in self.runs[seed]]

    def stat(self, figure) -> Optional[Stat]:
        values = [v for v in (figure(s) for s in self.models) if v is not None]
        return Stat(values) if values else None


# -- figures of one model ----------------------------------------------------------------
def _last(records: Sequence[dict], key: str) -> Optional[float]:
    values = curve(records, key)[1]
    return values[-1] if values else None


def final_valid(series: Series) -> Optional[float]:
    """Validation NLL at the last validation (all runs of a study stop at the same update)."""
    return _last(series.valid, "nll_loss")


def best_valid(series: Series) -> Optional[float]:
    values = curve(series.valid, "nll_loss")[1]
    return min(values) if values else None


def final_train(series: Series) -> Optional[float]:
    return _last(series.inner, "nll_loss")


def final_param_dist(series: Series) -> Optional[float]:
    return _last(series.inner, "param_dist")


# -- loading -----------------------------------------------------------------------------
def load_study(root: Path) -> List[Group]:
    groups: Dict[str, Group] = {}
    for meta_path in sorted(Path(root).rglob("study.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("kind") not in KINDS:
            raise ValueError(f"{meta_path}: kind must be one of {KINDS} (got {meta.get('kind')!r})")
        try:
            series = [s for s in load_run(meta_path.parent) if s.path is not None and s.valid]
        except FileNotFoundError:
            continue  # a run that has not written its log yet
        if not series:
            continue
        group = groups.setdefault(meta["group"], Group(
            meta["group"], meta["kind"], _params(meta)))
        group.regime = group.regime or bool(meta.get("regime"))
        group.runs[int(meta["seed"])] = series
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(groups.values(), key=lambda g: (order[g.kind], not g.regime, g.name))


def _params(meta: dict) -> dict:
    params = {k: meta[k] for k in KNOBS if k in meta}
    if meta["kind"] == "codistill":
        params = {**KNOB_DEFAULTS, **params}
    return params


# -- the claims --------------------------------------------------------------------------
def _gap(a: Stat, b: Stat) -> Tuple[float, float]:
    """(mean of a - mean of b, the larger of the two spreads)."""
    return a.mean - b.mean, max(a.spread, b.spread)


def _differs_only_in(group: Group, regime: Group, knob: str) -> bool:
    return group.kind == "codistill" and group.params.get(knob) != regime.params.get(knob) and all(
        group.params.get(k) == regime.params.get(k) for k in KNOBS if k != knob)


def claims(groups: Sequence[Group]) -> List[Tuple[str, str, str]]:
    """(claim, what was measured, verdict) for the paper's five claims, about the regime."""
    by_kind = {kind: [g for g in groups if g.kind == kind] for kind in KINDS}
    regime = next((g for g in by_kind["codistill"] if g.regime), None)
    if regime is None or not by_kind["control"]:
        return []
    valid = {g.name: g.stat(final_valid) for g in groups}
    # the control at the regularisation that is best for it: no gain from a weakened control
    control = min(by_kind["control"], key=lambda g: valid[g.name].mean)
    out = []

    if by_kind["baseline"]:
        base = by_kind["baseline"][0]
        diff, spread = _gap(valid[regime.name], valid[base.name])
        out.append(("1. two codistilled models (batch B) match all-reduce (2B) at equal updates",
                    f"val NLL {valid[regime.name]} vs {valid[base.name]}: {diff:+.3f} (spread {spread:.3f})",
                    "reproduced" if diff <= spread else "not reproduced"))

    diff, spread = _gap(valid[regime.name], valid[control.name])
    out.append(("2. a codistilled model beats the same model trained alone",
                f"val NLL {valid[regime.name]} vs {valid[control.name]} ({control.name}): "
                f"{diff:+.3f} (spread {spread:.3f})",
                "reproduced" if -diff > spread else "not reproduced"))

    variants = [g for g in by_kind["codistill"] if _differs_only_in(g, regime, "interval")]
    if variants:
        base_k = regime.params["interval"]
        parts, beaten = [], 0
        for g in sorted(variants + [regime], key=lambda g: g.params["interval"]):
            diff, spread = _gap(valid[g.name], valid[control.name])
            beaten += -diff > spread
            parts.append(f"{g.params['interval'] / base_k:g}x: {diff:+.3f}")
        out.append(("3. it holds for a snapshot interval 0.5x to 4x the default",
                    "val NLL minus the control's: " + ", ".join(parts),
                    "reproduced" if beaten == len(variants) + 1 else
                    f"not reproduced ({beaten} of {len(variants) + 1} beat the control)"))

    constant = [g for g in by_kind["codistill"] if _differs_only_in(g, regime, "gamma")
                and g.params.get("gamma") == 1]
    if constant and regime.params.get("gamma", 1) != 1:
        diff, spread = _gap(valid[regime.name], valid[constant[0].name])
        out.append(("4. alpha growing exponentially does at least as well as a constant alpha",
                    f"val NLL {valid[regime.name]} (gamma {regime.params['gamma']}) vs "
                    f"{valid[constant[0].name]} (constant): {diff:+.3f} (spread {spread:.3f})",
                    "reproduced" if diff <= spread else "not reproduced"))

    # The paper's Fig. 1c compares with all-reduce; the control is shown beside it.
    dist = {g.name: g.stat(final_param_dist) for g in groups}
    reference = by_kind["baseline"][0] if by_kind["baseline"] else control
    if dist[regime.name] and dist[reference.name]:
        diff, spread = _gap(dist[regime.name], dist[reference.name])
        line = (f"||theta - theta_0|| {dist[regime.name]} vs {reference.name} {dist[reference.name]}: "
                f"{diff:+.3f} (spread {spread:.3f})")
        if reference is not control and dist[control.name]:
            line += f"; alone: {dist[control.name]}"
        out.append(("5. the weights stay closer to their initial values than all-reduce's", line,
                    "reproduced" if -diff > spread else "not reproduced"))
    return out


# -- the report --------------------------------------------------------------------------
TABLE = [("val NLL", final_valid), ("best val NLL", best_valid), ("train NLL", final_train),
         ("param_dist", final_param_dist)]


def _knobs(group: Group) -> str:
    p = group.params
    if group.kind != "codistill":
        return f"dropout {p.get('dropout', '-')}"
    return ", ".join(f"{k} {p[k]}" for k in KNOBS if k in p)


def study_table(groups: Sequence[Group]) -> str:
    header = ["configuration", "kind", "settings", "seeds", "models"] + [t for t, _ in TABLE] + ["wall / model"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for g in groups:
        cells = [g.name + (" **(regime)**" if g.regime else ""), g.kind, _knobs(g),
                 ",".join(str(s) for s in sorted(g.runs)), str(len(g.models))]
        cells += [str(g.stat(f) or "-") for _, f in TABLE]
        wall = g.stat(wall_seconds)
        cells.append(human_seconds(wall.mean) if wall else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_study(out: Path, groups: Sequence[Group]) -> List[str]:
    """The baseline, every control and the regime: the mean over models and seeds as a line,
    their range as a band. Validation NLL over the run and over its second half (zoomed),
    and the distance from the initial weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.kind != "codistill" or g.regime]
    styles = {"baseline": dict(color="k"), "control": dict(color="0.5"),
              "codistill": dict(color="C3", linestyle="--")}
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
                style = dict(styles[g.kind])
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
    out.mkdir(parents=True, exist_ok=True)
    found = claims(groups)
    lines = ["# Codistillation study", "", study_table(groups), "",
             "- *val NLL*: validation NLL per target token (base 2) at the last validation, "
             "the same update for every run; *best val NLL*: the lowest validation of the run; "
             "*param_dist*: distance of the weights from their initial values at the end.",
             "- Each cell is the mean ± half the spread (max - min) over the samples: every seed "
             "of a baseline or control, both models of every seed of a codistilled pair.", ""]
    if found:
        lines += ["## The paper's claims at this scale", "",
                  "| claim | measured | verdict |", "|---|---|---|"]
        lines += [f"| {c} | {m} | {v} |" for c, m, v in found]
        lines += ["", "A gap counts when it is larger than the larger spread (max - min) of the "
                  "two groups compared; the control is the control configuration with the lowest "
                  "val NLL.", ""]
    for name in plot_study(out, groups):
        lines += [f"![{name}]({name})", ""]
    text = "\n".join(lines)
    (out / "study.md").write_text(text)
    return text
