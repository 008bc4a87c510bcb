"""The scenarios of a study: every method trained for the same wall-clock budget W, with
equal workers, with one worker at half speed, or with one worker preempted, to ask which
method gives the best translation for the same wall time.

A scenario's line has ``budget`` (seconds, W) in its ``study.json``, and ``slowdown`` (F)
or ``preempt`` ([AT, FOR] seconds) where a fault is injected into model 1 (rank 1, or the
whole job, of all-reduce). Model 0 is the fast model: the one a user keeps when a worker
is slow. Two model sizes: a pair whose model 1 is bigger (``peer_layers``, ``peer_dim``) and
the ``kd`` line, whose model 0 is a student trained after its teacher, beside the small and
the big model alone (control lines, told apart by their depth and width; the scenario may
train on another fraction of the data than the rest). Goodput is a model's updates per
second divided by the same model's in the same method's line with no fault, on the same seed
(``recipes/study.sh`` measures W and then every line of a seed in one run, each with the
machine to itself).
"""
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_codistill.tools import pages
from fairseq_codistill.tools.runs import Series, curve, updates_done, wall_seconds
from fairseq_codistill.tools.study import SETTING, size

SCENARIOS = (("equal", "equal speed"), ("straggler", "2x straggler"), ("preemption", "preemption"),
             ("sizes", "two model sizes"))
# (label, what a line of the method is): its kind, asynchronous, max_lead 0
METHODS = (("all-reduce (2 ranks)", ("baseline", False, False)),
           ("LocalSGD", ("localsgd", False, False)),
           ("LocalSGD, asynchronous", ("localsgd", True, False)),
           ("DiLoCo", ("diloco", False, False)),
           ("DiLoCo, asynchronous", ("diloco", True, False)),
           ("codistillation (never waits)", ("codistill", False, True)),
           ("the fast model alone", ("control", False, False)),
           ("two-phase KD (the big model, then the small one from it)", ("kd", False, False)),
           # a lone model too, told apart by its size: the premise of the sizes scenario
           ("the big model alone", None))
CODISTILL, ALONE, KD, BIG_ALONE = METHODS[5][0], METHODS[6][0], METHODS[7][0], METHODS[8][0]


def scenario_of(group) -> str:
    meta = next(iter(group.metas.values()))
    if meta.get("slowdown"):
        return "straggler"
    if meta.get("preempt"):
        return "preemption"
    if group.heterogeneous or group.kind == "kd":
        return "sizes"
    return "equal"


def method_of(group) -> Optional[str]:
    meta = next(iter(group.metas.values()))
    key = (group.kind, bool(meta.get("asynchronous")), meta.get("max_lead", 1) == 0)
    return next((label for label, k in METHODS if k == key), None)


# -- one model's figures at W --------------------------------------------------------------
def bleu_last(series: Series) -> Optional[float]:
    return _score(series.eval, "bleu")


def bleu_best(series: Series) -> Optional[float]:
    return _score(series.eval_best, "bleu")


def chrf_last(series: Series) -> Optional[float]:
    return _score(series.eval, "chrf")


def _score(result: Optional[dict], key: str) -> Optional[float]:
    value = (result or {}).get(key)
    return float(value) if value is not None else None


def valid_at_end(series: Series) -> Optional[float]:
    """Validation NLL at the end of the budget (fairseq validates when it stops)."""
    values = curve(series.valid, "nll_loss")[1]
    return values[-1] if values else None


def _walls(series: Series) -> List[Tuple[float, float]]:
    """(update, seconds after the launch) of each training record. fairseq's wall clock
    starts again at 0 in each attempt of a restarted model: each fall of it is the next
    restart, and ``series.restarted`` says when that attempt began."""
    restarted, out, attempt, last = series.restarted, [], 0, -1.0
    for r in series.inner:
        wall, update = r.get("wall"), r.get("num_updates")
        if not (isinstance(wall, float) and isinstance(update, float)):
            continue
        if wall < last and attempt < len(restarted):
            attempt += 1
        last = wall
        out.append((update, wall + (restarted[attempt - 1] if attempt else 0.0)))
    return out


def end_seconds(series: Series) -> Optional[float]:
    """Seconds from the start to the end of training, down time included. fairseq's "done
    training in" counts the last attempt only: a restarted model's ends that many seconds
    after its last restart."""
    if not series.restarted:
        return wall_seconds(series)
    if series.done_seconds is not None:
        return series.restarted[-1] + series.done_seconds
    walls = _walls(series)
    return walls[-1][1] if walls else None


def pace(series: Series) -> Optional[float]:
    """Updates per second of wall time, start to end of training (a preempted model's
    down time included: it is what the preemption costs)."""
    updates, wall = updates_done(series), end_seconds(series)
    return updates / wall if updates and wall else None


def valid_by_wall(series: Series) -> Tuple[List[float], List[float]]:
    """(wall seconds, validation NLL): each validation at the wall time of the training
    record of its update (logged just before it), the last one at the end of training."""
    walls = dict(_walls(series))
    xs, ys = [], []
    for update, nll in zip(*curve(series.valid, "nll_loss")):
        before = [u for u in walls if u <= update]
        wall = walls[max(before)] if before else None
        if update == updates_done(series) and series.done_seconds is not None:
            wall = end_seconds(series)
        if wall is not None:
            xs.append(wall)
            ys.append(nll)
    return xs, ys


# -- the tables ------------------------------------------------------------------------------
class Lines:
    """A study's timed groups of one language pair by scenario and method. The lone model
    of a scenario is the control line on the data and the model of that scenario's other
    lines (the sizes scenario may train on more data than the rest), for the same budget; in
    the sizes scenario, the control line of the big peer's size is the big model alone. A
    scenario run at several budgets or sizes (the sizes scenario's search for its premise):
    the tables take each method's line of the longest budget, the newest run of them, and its
    details show the rest."""

    def __init__(self, groups: Sequence):
        self.groups = [g for g in groups if g.timed and method_of(g) is not None]
        self.by: Dict[Tuple[str, str], object] = {}
        self.others: Dict[str, list] = {}  # scenario -> its lines the tables do not take
        lone = [g for g in self.groups if g.kind == "control"]
        # a scenario run at several budgets or sizes: the tables take each method's longest,
        # the newest of those
        newest_first = sorted((g for g in self.groups if g.kind != "control"), key=_ran_on, reverse=True)
        for g in sorted(newest_first, key=lambda g: -_budget(g)):
            key = (scenario_of(g), method_of(g))
            if key in self.by:
                self.others.setdefault(key[0], []).append(g)
            self.by.setdefault(key, g)
        for key, _ in SCENARIOS:
            ran = [g for (s, _), g in self.by.items() if s == key]
            if not ran:
                continue
            fraction, model = _data_and_model(ran[0])
            timed_alike = [c for c in lone if _same_budget(c, ran[0])]
            self._put(key, ALONE, [c for c in timed_alike if _data_and_model(c) == (fraction, model)])
            if key == "sizes":
                big = ran[0].model(1)
                self._put(key, BIG_ALONE, [c for c in timed_alike if _data_and_model(c) == (fraction, big)])
                # the lone models of the search for the premise, on the same data
                self.others.setdefault(key, []).extend(
                    c for c in lone if _data_and_model(c)[0] == fraction
                    and c not in (self.get(key, ALONE), self.get(key, BIG_ALONE)))
        # a lone model suffers no fault: the straggler's or the preemption's is one at equal speed
        faulty = [self.get(key, ALONE) for key in ("straggler", "preemption") if self.get(key, ALONE)]
        if ("equal", ALONE) not in self.by and (faulty or lone):
            self.by[("equal", ALONE)] = (faulty or lone)[0]
        self.scenarios = [(key, label) for key, label in SCENARIOS
                          if any(s == key for s, _ in self.by)]

    def _put(self, scenario: str, method: str, found: list) -> None:
        if found:
            self.by[(scenario, method)] = found[0]

    def get(self, scenario: str, method: str):
        return self.by.get((scenario, method))

    def reference(self, group):
        """The same method's line at equal speed (a lone model is its own; the sizes
        scenario's pair has none: its model 1 is another model)."""
        if group.kind == "control":
            return group
        if scenario_of(group) == "sizes":
            return None
        return self.by.get(("equal", method_of(group)))


def _budget(group) -> float:
    return max(m.get("budget", 0) for m in group.metas.values())


def _same_budget(a, b) -> bool:
    """Both lines trained for the same budget on every seed both ran (W is per seed)."""
    seeds = set(a.metas) & set(b.metas)
    return bool(seeds) and all(abs(a.metas[s].get("budget", 0) - b.metas[s].get("budget", 0)) < 1
                               for s in seeds)


def _ran_on(group) -> str:
    """When the line's newest seed ran (an ISO date)."""
    return max(m.get("env", {}).get("date", "") for m in group.metas.values())


def _data_and_model(group) -> Tuple[float, tuple]:
    """(fraction, (layers, width)) of a line: the data it trains on and its model 0."""
    setting = dict(zip(SETTING, group.setting))
    return setting["fraction"], group.model(0)


def _by_seed(group, figure, model: int = 0) -> Dict[int, float]:
    """``figure`` of model ``model`` of each seed (the job itself for one model)."""
    out = {}
    for seed in sorted(group.runs):
        models = group.runs[seed]
        value = figure(models[min(model, len(models) - 1)])
        if value is not None:
            out[seed] = value
    return out


def _goodput(group, reference, model: int) -> Dict[int, float]:
    """Per seed: this model's pace over the same model's in the reference line."""
    out = {}
    for seed in sorted(group.runs):
        if reference is None or seed not in reference.runs:
            continue
        ours, theirs = group.runs[seed], reference.runs[seed]
        a = pace(ours[min(model, len(ours) - 1)])
        b = pace(theirs[min(model, len(theirs) - 1)])
        if a and b:
            out[seed] = a / b
    return out


def _goodput_in_run(group) -> Dict[int, float]:
    """Per seed, from the straggler's own run alone: model 0's pace over model 1's pace
    times its slowdown F. The launcher holds model 1 stopped (F - 1)/F of the time, so F
    times its pace is the unthrottled pace of a model of the same size on the same machine
    in the same run: what model 0 would do if nothing held it back. (All-reduce is one job
    whose ranks meet at every update: it has no second model to measure.)"""
    out = {}
    for seed, models in sorted(group.runs.items()):
        factor = group.metas[seed].get("slowdown")
        if not factor or len(models) < 2:
            continue
        a, b = pace(models[0]), pace(models[1])
        if a and b:
            out[seed] = a / (factor * b)
    return out


def _fmt(values: Dict[int, float], digits: int, seeds: Sequence[int] = ()) -> str:
    """Mean ± half the spread; the seeds it rests on where they are fewer than ``seeds``."""
    if not values:
        return "-"
    v = list(values.values())
    text = f"{v[0]:.{digits}f}" if len(v) == 1 else \
        f"{statistics.fmean(v):.{digits}f} ± {(max(v) - min(v)) / 2:.{digits}f}"
    if len(values) < len(seeds):
        text += f" (seed{'s' if len(values) > 1 else ''} {','.join(str(s) for s in sorted(values))})"
    return text


def _judge(a: Dict[int, float], b: Dict[int, float], higher_is_better: bool, digits: int) -> str:
    """The gap a - b on the seeds both lines ran, and 'better', 'worse' or 'level' by the
    larger of the two spreads there. One seed has no spread, so it gives the gap alone."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-"
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    diff = statistics.fmean(x) - statistics.fmean(y)
    if len(seeds) == 1:
        return f"{diff:+.{digits}f}"
    spread = max(max(x) - min(x), max(y) - min(y))
    gain = diff if higher_is_better else -diff
    word = "better" if gain > spread else "worse" if -gain > spread else "level"
    return f"{word} ({diff:+.{digits}f}, spread {spread:.{digits}f})"


def _mean(values: Dict[int, float]) -> float:
    return statistics.fmean(values.values()) if values else 0.0


def which_method(lines: Lines) -> List[str]:
    header = ["method"] + [label for _, label in lines.scenarios]
    seeds = sorted({s for g in lines.groups for s in g.runs})
    rows = []
    for method, _ in METHODS:
        cells = [_fmt(_by_seed(g, bleu_last), 2, seeds) if (g := lines.get(s, method)) is not None else "-"
                 for s, _ in lines.scenarios]
        if any(c != "-" for c in cells):
            rows.append([method] + cells)
    return _markdown(header, rows)


VERDICT_HEADER = ["scenario", "codistillation's fast model against", "BLEU (last checkpoint)",
                  "validation NLL", "seeds"]


def verdicts(lines: Lines) -> List[str]:
    """Codistillation's fast model against each competitor, per scenario, in BLEU of the
    last checkpoint at W and in validation NLL at W, on the seeds both ran: a table."""
    return _markdown(VERDICT_HEADER, _verdict_rows(lines))


def _verdict_rows(lines: Lines) -> List[List[str]]:
    rows = []
    for scenario, label in lines.scenarios:
        ours = lines.get(scenario, CODISTILL)
        if ours is None:
            rows.append([label, "(codistillation not run)", "-", "-", "-"])
            continue
        asynchronous = [m for m in ("LocalSGD, asynchronous", "DiLoCo, asynchronous")
                        if lines.get(scenario, m) is not None]
        best_async = max(asynchronous, default=None,
                         key=lambda m: _mean(_by_seed(lines.get(scenario, m), bleu_last)))
        for rival in [best_async, "all-reduce (2 ranks)", "LocalSGD", "DiLoCo", KD, ALONE]:
            other = lines.get(scenario, rival) if rival else None
            if other is None or (rival in asynchronous and rival != best_async):
                continue
            name = f"the best asynchronous averaging ({rival})" if rival == best_async else rival
            seeds = sorted(set(ours.runs) & set(other.runs))
            rows.append([label, name,
                         _judge(_by_seed(ours, bleu_last), _by_seed(other, bleu_last), True, 2),
                         _judge(_by_seed(ours, valid_at_end), _by_seed(other, valid_at_end), False, 3),
                         ",".join(map(str, seeds)) + (" (no verdict)" if len(seeds) == 1 else "")
                         if seeds else "none in common"])
    return rows


def premise(lines: Lines) -> List[str]:
    """The sizes scenario asks for a big model that alone translates better than the small
    one alone: the big model alone against the small one alone, in both measures."""
    small, big = lines.get("sizes", ALONE), lines.get("sizes", BIG_ALONE)
    if small is None or big is None:
        return []
    seeds = sorted(set(small.runs) & set(big.runs))
    bleu = _judge(_by_seed(big, bleu_last), _by_seed(small, bleu_last), True, 2)
    nll = _judge(_by_seed(big, valid_at_end), _by_seed(small, valid_at_end), False, 3)
    on = f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
    return [f"The premise of two model sizes, the big model alone ({size(big.model())}) against the small "
            f"model alone ({size(small.model())}) for the scenario's budget (big minus small): BLEU {bleu}, "
            f"validation NLL {nll} ({on}). Where the "
            "big model is not better, the scenario measures codistillation with a peer that has less to "
            "teach than it should."]


def details(lines: Lines, scenario: str) -> List[str]:
    header = ["line", "model", "seeds", "budget (s)", "updates reached", "goodput", "goodput (in run)",
              "val NLL at the end", "BLEU", "BLEU (best)", "chrF"]
    rows = []
    shown = [lines.get(scenario, method) for method, _ in METHODS] + lines.others.get(scenario, [])
    for g in shown:
        if g is None:
            continue
        seeds = sorted(g.runs)
        budgets = {s: m["budget"] for s, m in sorted(g.metas.items()) if "budget" in m}
        reference = lines.reference(g)
        for model in range(max(len(r) for r in g.runs.values())):
            rows.append([g.name, ("student" if g.kind == "kd" else "job") if len(next(iter(g.runs.values()))) == 1 else
                         f"model{model}" + (" (faulty)" if model == 1 and scenario in ("straggler", "preemption")
                                               else " (big)" if model == 1 and scenario == "sizes" else ""),
                         ",".join(str(s) for s in seeds), _fmt(budgets, 0),
                         _fmt(_by_seed(g, updates_done, model), 0),
                         "1" if g is reference else _fmt(_goodput(g, reference, model), 2, seeds),
                         _fmt(_goodput_in_run(g), 2, seeds) if model == 0 else "-",
                         _fmt(_by_seed(g, valid_at_end, model), 3), _fmt(_by_seed(g, bleu_last, model), 2),
                         _fmt(_by_seed(g, bleu_best, model), 2), _fmt(_by_seed(g, chrf_last, model), 2)])
    return _markdown(header, rows)


def environments(groups: Sequence) -> List[str]:
    """Where the timed lines ran: wall-clock lines compare only on one kind of machine."""
    seen = {}
    for g in groups:
        for m in g.metas.values():
            env = m.get("env") or {}
            key = (env.get("cpu"), env.get("precision"), env.get("device"), env.get("torch"),
                   env.get("fairseq"))
            seen.setdefault(key, []).append(env.get("date", "")[:10])
    return [f"- {cpu or 'unknown CPU'}, {precision} on {device}, torch {torch}, fairseq {fairseq}: "
            f"{len(dates)} run(s)" for (cpu, precision, device, torch, fairseq), dates in seen.items()]


def plot(out: Path, lines: Lines, scenario: str, label: str, stem: str) -> Optional[str]:
    """Validation NLL against wall seconds, model 0 of every line of ``scenario``, one thin
    line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, _) in enumerate(METHODS):
        g = lines.get(scenario, method)
        if g is None:
            continue
        for j, seed in enumerate(sorted(g.runs)):
            xs, ys = valid_by_wall(g.runs[seed][0])
            ax.plot(xs, ys, color=f"C{i}", marker="o", markersize=2, linewidth=1,
                    label=method if j == 0 else None)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set_xlabel("wall seconds")
    ax.set_ylabel("validation NLL (base 2), model 0")
    ax.set_title(f"{label}: validation NLL against wall time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    name = f"study_wall_{stem}.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


# -- the README's table -----------------------------------------------------------------------
BEGIN = "<!-- which-method: generated by fairseq-codistill-report --study results/study --readme README.md -->"
END = "<!-- end of which-method -->"


def readme_block(groups: Sequence) -> List[str]:
    """The README's "which method" table: the language pair with most seeds, a column per
    scenario (BLEU of the fast model at W; "not run" where a scenario has no line), then
    codistillation's verdict per scenario against the best asynchronous averaging, two-phase
    KD and the fast model alone, naming the measure. Between ``BEGIN`` and ``END``."""
    timed = [g for g in groups if g.timed and method_of(g) is not None]
    if not timed:
        return [BEGIN, "No scenario has run yet.", END]
    pair = _pairs_most_seeds_first(timed)[0]
    lines = Lines([g for g in timed if _pair(g) == pair])
    seeds = sorted({s for g in lines.groups for s in g.runs})
    ran = {key for key, _ in lines.scenarios}
    rows = []
    for method, _ in METHODS:
        cells = [_fmt(_by_seed(g, bleu_last), 2, seeds)
                 if key in ran and (g := lines.get(key, method)) is not None else "not run"
                 for key, _ in SCENARIOS]
        if any(c != "not run" for c in cells):
            rows.append([method] + cells)
    text = [BEGIN, "", f"BLEU at equal wall time W ({pair}, seed{'s' if len(seeds) > 1 else ''} "
            f"{','.join(map(str, seeds))}; "
            "mean ± half the spread, the fast model's last checkpoint; a scenario run for its "
            "own multiple of W names it in docs/study.md):", ""]
    text += _markdown(["method"] + [label for _, label in SCENARIOS], rows) + [""]
    text += [machines(lines), ""]
    wanted = [r for r in _verdict_rows(lines) if r[1].startswith("the best asynchronous") or r[1] in (ALONE, KD)]
    text += ["Codistillation (never waits) against the best asynchronous averaging, two-phase KD "
             "and the fast model alone, on the seeds both ran (codistillation minus the other); "
             "better or worse only beyond the larger spread of the two:", ""]
    text += _markdown(["scenario", "against", "BLEU at W", "validation NLL at W", "seeds"], wanted)
    sentence = premise(lines)
    text += [""] + sentence if sentence else []
    return text + ["", END]


def machines(lines: Lines) -> str:
    """Which CPU ran each scenario's seeds (from each run's study.json): a column may join
    seeds run on different machines, each line's W measured on its own."""
    parts = []
    for key, label in SCENARIOS:
        seeds_by_cpu: Dict[str, set] = {}
        for (scenario, _), group in lines.by.items():
            if scenario == key:
                for seed, meta in group.metas.items():
                    cpu = (meta.get("env") or {}).get("cpu") or "not recorded"
                    seeds_by_cpu.setdefault(cpu, set()).add(seed)
        if seeds_by_cpu:
            cpus = ", ".join(f"{cpu} (seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, sorted(seeds)))})"
                             for cpu, seeds in sorted(seeds_by_cpu.items(), key=lambda kv: min(kv[1])))
            parts.append(f"{label}: {cpus}")
    return ("Machines, from each run's study.json (W is measured per seed on its own machine): "
            + "; ".join(parts) + ".")


def write_readme(path: Path, groups: Sequence) -> bool:
    """Replace the block between ``BEGIN`` and ``END`` of the file ``path`` by
    ``readme_block``; True if it changed. A file without the markers is an error."""
    return pages.fill_block(path, BEGIN, END, readme_block(groups)[1:-1])


def _markdown(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def _pairs_most_seeds_first(timed: Sequence) -> List[str]:
    """The language pairs of the timed lines, most seeds first (then by name)."""
    return sorted({_pair(g) for g in timed},
                  key=lambda pair: (-len({s for g in timed if _pair(g) == pair for s in g.runs}), pair))


def _pair(group) -> str:
    return group.setting[0] or "?"


def report(out: Path, groups: Sequence) -> List[str]:
    """The scenarios' section of study.md (nothing when the study has no timed line): one
    part per language pair, the one with most seeds first."""
    timed = [g for g in groups if g.timed and method_of(g) is not None]
    if not timed:
        return []
    pairs = _pairs_most_seeds_first(timed)
    text = ["## Which method? Equal wall time", "",
            "BLEU of the fast model's last checkpoint at the budget W (model 0; all-reduce is one "
            "job), mean ± half the spread (max - min) over seeds; a cell names its seeds where "
            "they are fewer than the table's. W is the wall time the regime's codistilled pair "
            "takes for its updates at equal speed, measured on each seed in the same study run. "
            "The second table compares two lines on the seeds both ran, BLEU at W and validation "
            "NLL at W: the gap (codistillation minus the other; NLL lower is better), and "
            "better or worse only beyond the larger spread (max - min) of the two there. One seed "
            "has no spread: its gap is shown, with no verdict.", ""]
    for named in pairs:
        lines = Lines([g for g in timed if _pair(g) == named])
        text += [f"### {named}", ""] + which_method(lines) + [""] + verdicts(lines) + [""]
        sentence = premise(lines)
        text += sentence + [""] if sentence else []
        for scenario, label in lines.scenarios:
            text += [f"#### {named}, {label}", ""] + details(lines, scenario) + [""]
            name = plot(out, lines, scenario, f"{named}, {label}", f"{named}_{scenario}")
            if name:
                text += [f"![{name}]({name})", ""]
    text += ["Goodput: a model's updates per second over the same model's in the same method's "
             "line at equal speed, on the same seed. Goodput (in run), with a straggler: the fast "
             "model's updates per second over F times the straggler's, in the same run (the "
             "launcher holds the straggler stopped (F - 1)/F of the time, so F times its pace is "
             "a full-speed model's on the same machine); all-reduce, one job, has none. Where "
             "the lines ran:", ""]
    text += environments(timed) + [""]
    return text
