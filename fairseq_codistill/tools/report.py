"""fairseq-codistill-report: a table and the paper's plots from fairseq's JSON logs.

    fairseq-codistill-report RUN_DIR... [--out DIR] [--allreduce-workers N]
    fairseq-codistill-report demo/baseline demo/codistill demo/control --export results/demo
    fairseq-codistill-report results/demo/{baseline,codistill,control} --allreduce-workers 2 --readme README.md

A run directory holds ``train.log`` (one model) or ``model*/train.log`` (models started by
fairseq-codistill-launch), read by ``fairseq_codistill.tools.runs``, with BLEU and chrF from
its eval.json files. Writes ``DIR/report.md`` and PNGs in the style of the
paper's figures (Sodhani et al. 2020): train and validation NLL, codistillation loss and
alpha, and the distance of the weights from their initial values, all against updates.
"""
import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from fairseq_codistill.tools.runs import (
    MODEL_DIR,
    Series,
    curve,
    human_bytes,
    human_seconds,
    last_train,
    load_run,
    updates_done,
    wall_seconds,
)
from fairseq_codistill.tools import pages
from fairseq_codistill.tools.results import export, export_runs, logged_models
from fairseq_codistill.tools.study import load_study, write_study_report


# -- the table -----------------------------------------------------------------------
def bytes_exchanged(series: Series, allreduce_workers: Optional[int]) -> Optional[float]:
    """Bytes this model received from the others.

    Codistilled: the snapshots it read (``codistill_bytes``, counted by the exchange).
    All-reduce of W workers: an estimate, a ring all-reduce of fp32 gradients receives
    2 (W-1)/W x 4 bytes per parameter per update. W is the logged world size, or
    ``--allreduce-workers`` for a single process that stands for W workers: one that sums W
    batches per update (``--update-freq`` W or more); a run of one batch per update is one
    worker (a model trained alone), whatever the flag says.
    """
    codistill = [r["codistill_bytes"] for r in series.inner if isinstance(r.get("codistill_bytes"), float)]
    if codistill:
        return codistill[-1]
    workers = series.setup.get("world_size") or 1
    if allreduce_workers and series.setup.get("update_freq", 1) >= allreduce_workers:
        workers = allreduce_workers
    updates = updates_done(series)
    params = series.setup.get("params")
    if workers <= 1 or params is None or updates is None:
        return 0.0 if workers <= 1 and series.inner else None
    return 2 * (workers - 1) / workers * 4 * params * updates


@dataclass
class Row:
    label: str
    updates: Optional[float] = None
    train_loss: Optional[float] = None
    train_nll: Optional[float] = None
    valid_nll: Optional[float] = None
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    bytes: Optional[float] = None
    wall: Optional[float] = None


def table_row(series: Series, allreduce_workers: Optional[int] = None) -> Row:
    row = Row(series.label, updates=updates_done(series), wall=wall_seconds(series),
              bytes=bytes_exchanged(series, allreduce_workers))
    train = last_train(series)
    if train is not None:
        row.train_loss, row.train_nll = train.get("loss"), train.get("nll_loss")
    if series.valid:
        row.valid_nll = series.valid[-1].get("nll_loss")
    if series.eval:
        row.bleu, row.chrf = series.eval.get("bleu"), series.eval.get("chrf")
        if row.valid_nll is None:
            row.valid_nll = series.eval.get("valid_nll")
    return row


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = ["run", "updates", "train loss", "train NLL", "val NLL", "BLEU", "chrF", "bytes received",
          "wall time"]


def row_cells(row: Row) -> List[str]:
    return [row.label, _fmt(row.updates, 0), _fmt(row.train_loss, 3), _fmt(row.train_nll, 3),
            _fmt(row.valid_nll, 3), _fmt(row.bleu, 2), _fmt(row.chrf, 2), human_bytes(row.bytes),
            human_seconds(row.wall)]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADER] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(row: List[str]) -> str:  # labels to the left, numbers to the right
        return "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(c) for c in cells[1:]])


# -- the plots ---------------------------------------------------------------------------
def _style(series: Series, index: int) -> dict:
    """Baselines solid black-ish, codistilled models coloured and dashed, as in the paper."""
    if series.codistilled:
        return {"linestyle": "--", "color": f"C{index % 10}"}
    return {"linestyle": "-", "color": "k" if index == 0 else f"C{index % 10}"}


def plot_panels(path: Path, series: Sequence[Series], panels, title: str) -> bool:
    """One PNG of len(panels) side-by-side panels; panels are (records attr, key, y label).
    Returns False (writes nothing) when no series has any of the keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (attr, key, ylabel) in zip(axes[0], panels):
        for i, s in enumerate(series):
            xs, ys = curve(getattr(s, attr), key)
            if xs:
                ax.plot(xs, ys, label=s.label, marker="o" if len(xs) < 15 else None,
                        markersize=3, **_style(s, i))
                drawn = True
        ax.set_xlabel("updates")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


PLOTS = [
    ("loss.png", "Training and validation NLL (base 2)",
     [("inner", "nll_loss", "train NLL (the cross-entropy part)"), ("valid", "nll_loss", "validation NLL")]),
    ("codistill.png", "Codistillation loss and its weight",
     [("inner", "codistill_loss", "codistill loss (MSE of logits)"), ("inner", "alpha", "alpha")]),
    ("param_dist.png", "Distance of the weights from their initial values",
     [("inner", "param_dist", "||theta - theta_0||_2")]),
]


def write_plots(out: Path, series: Sequence[Series]) -> List[str]:
    curves = [s for s in series if s.inner or s.valid]
    return [name for name, title, panels in PLOTS if plot_panels(out / name, curves, panels, title)]


# -- report.md ---------------------------------------------------------------------------
def setup_line(series: Series) -> str:
    s = series.setup
    parts = []
    if "params" in s:
        parts.append(f"{s['params']:,} parameters")
    if "criterion" in s:
        smoothing = s.get("label_smoothing") or 0
        parts.append(s["criterion"] + (f" (label smoothing {smoothing:g})" if smoothing else ""))
    if "max_tokens" in s:
        tokens = s["max_tokens"] * s.get("world_size", 1) * s.get("update_freq", 1)
        parts.append(f"up to {tokens:,} tokens per update")
    if s.get("world_size", 1) > 1:
        parts.append(f"{s['world_size']} data-parallel workers")
    return f"- **{series.label}**: " + (", ".join(parts) or "no setup logged") + \
        (f" (`{series.path}`)" if series.path else "")


def comparison(rows: Sequence[Row]) -> List[str]:
    """What codistillation adds over the model trained alone (row ``control``) and how far
    it is from all-reduce (row ``baseline``), in val NLL and in BLEU, each called better or
    worse on its own: empty without those rows."""
    models = [r for r in rows if MODEL_DIR.match(r.label.rsplit("/", 1)[-1]) and r.valid_nll is not None]
    by_label = {r.label: r for r in rows}
    if not models:
        return []
    nll = statistics.fmean(r.valid_nll for r in models)
    bleus = [r.bleu for r in models if r.bleu is not None]
    bleu = statistics.fmean(bleus) if len(bleus) == len(models) else None
    lines = [f"codistilled models: mean val NLL {nll:.3f} over {len(models)} "
             f"(best {min(r.valid_nll for r in models):.3f})"
             + (f", mean BLEU {bleu:.2f}" if bleu is not None else "")]
    for label, what in (("control", "the same model trained alone"), ("baseline", "all-reduce")):
        other = by_label.get(label)
        if other is None or other.valid_nll is None:
            continue
        parts = [_verdict("val NLL", nll - other.valid_nll, 3, lower_is_better=True)]
        shown = f"{other.valid_nll:.3f}"
        if bleu is not None and other.bleu is not None:
            parts.append(_verdict("BLEU", bleu - other.bleu, 2, lower_is_better=False))
            shown += f", BLEU {other.bleu:.2f}"
        lines.append(f"vs {what} ({label}, {shown}): " + "; ".join(parts))
    return lines if len(lines) > 1 else []


def _verdict(measure: str, diff: float, digits: int, lower_is_better: bool) -> str:
    """'val NLL -0.138 (better)': better or worse in this measure only."""
    if round(diff, digits) == 0:
        word = "level"
    else:
        word = "better" if (diff < 0) == lower_is_better else "worse"
    return f"{measure} {diff:+.{digits}f} ({word})"


def peerless(series: Sequence[Series]) -> List[str]:
    """A warning for each codistilled model that trained without any peer: it is a model
    trained alone, whatever its label says."""
    return [f"WARNING: {s.label} trained without any peer (num_peers 0 throughout): it is not "
            "codistilled; were all models given the same --codistill-dir?"
            for s in series if s.without_peers]


def write_report(out: Path, series: Sequence[Series], allreduce_workers: Optional[int] = None) -> List[Row]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [table_row(s, allreduce_workers) for s in series]
    plots = write_plots(out, series)
    summary = comparison(rows)
    lines = ["# Codistillation report", ""] + [f"**{w}**" for w in peerless(series)]
    lines += ["", markdown_table(rows), ""]
    if summary:
        lines += [f"**{summary[0]}**"] + [f"- {line}" for line in summary[1:]] + [""]
    lines += [
             "- *updates*: the last update logged; *train loss*: the criterion's loss "
             "(with label smoothing or the codistillation term), *train NLL*: its "
             "cross-entropy part, both the last logged average (the final epoch's, or the "
             "latest log interval of a run still in progress).",
             "- *val NLL*: fairseq's validation NLL per target token in **base 2**, as logged at "
             "the last validation (from eval.json for an ensemble).",
             "- *BLEU*, *chrF*: sacrebleu on detokenized output, from eval.json where it exists.",
             "- *bytes received*: codistilled models, the peer snapshots each one read; "
             "all-reduce, a ring all-reduce estimate, 2(W-1)/W x 4 bytes per parameter per update"
             + (f" with W = {allreduce_workers} (--allreduce-workers)" if allreduce_workers else "")
             + ".",
             "", "## Runs", ""]
    lines += [setup_line(s) for s in series if s.path is not None and (s.inner or s.valid)]
    for s in series:
        if s.eval:
            lines.append(f"- eval of **{s.label}**: " + json.dumps(s.eval))
    lines.append("")
    for name, title, _ in PLOTS:
        if name in plots:
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return rows


# -- README.md's demo block ---------------------------------------------------------------
DEMO_BEGIN = ("<!-- demo: generated by fairseq-codistill-report results/demo/baseline results/demo/codistill "
              "results/demo/control --allreduce-workers 2 --readme README.md -->")
DEMO_END = "<!-- end of demo -->"


def demo_block(rows: Sequence[Row], envs: Sequence[dict]) -> List[str]:
    """README.md's example of what ``make demo`` prints at its end: the summary of a kept
    demo run (results/demo) and the machine it ran on (its runs' env.json), so that the
    example is the committed run's, not typed."""
    summary = comparison(rows)
    if not summary:
        raise ValueError("no codistilled models beside a control or a baseline: no summary to show")
    machines = sorted({f"{e.get('cores')}-core {e.get('cpu')}, {e.get('precision')} on {e.get('device')} "
                       f"(torch {e.get('torch')}, fairseq {e.get('fairseq')})" for e in envs})
    where = "a " + " and ".join(machines) if machines else "a machine its runs did not record"
    return ["", f"On {where}, it printed:", "",
            "    " + summary[0], *("      " + line for line in summary[1:]), ""]


def run_envs(runs: Sequence[Path]) -> List[dict]:
    """The env.json each run folder holds (recipes/demo.sh writes one per run)."""
    envs = []
    for run in runs:
        try:
            envs.append(json.loads((Path(run) / "env.json").read_text()))
        except (OSError, ValueError):
            continue
    return envs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fairseq-codistill-report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR",
                   help="a directory with train.log, or with model*/train.log")
    p.add_argument("--study", type=Path, default=None, metavar="DIR",
                   help="summarise a study instead: runs with a study.json under DIR (recipes/study.sh), "
                        "mean and spread over seeds and the paper's claims, into OUT/study.md")
    p.add_argument("--export", type=Path, default=None, metavar="DEST",
                   help="copy each run's small files (study.json, launch.json, env.json, eval*.json and "
                        "its log's records as train.json; no checkpoints) into DEST: with --study, every "
                        "run of the study, the results/ a study page is generated from (docs/study.md: "
                        "--study results/study --out docs); else the RUN_DIRs, each into DEST/its name")
    p.add_argument("--readme", type=Path, default=None, metavar="FILE",
                   help="with --study: also fill FILE's which-method block (between the markers "
                        "fairseq_codistill.tools.scenarios.BEGIN and END) with the scenarios' table: "
                        "README.md's 'Should I use it?' is generated so, from results/study. With RUN_DIRs "
                        "(the demo's), fill FILE's demo block (DEMO_BEGIN ... DEMO_END of this module) "
                        "with their summary and the machine they ran on")
    p.add_argument("--out", "-o", type=Path, default=Path("report"), help="output folder (default: report)")
    p.add_argument("--allreduce-workers", type=int, default=None,
                   help="count a single-process baseline that sums W batches per update (--update-freq "
                        ">= W) as W all-reduce workers in 'bytes received' (it stands for W workers "
                        "with 1/W of its batch each); a run of one batch per update exchanges nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.study is not None:
        if args.export is not None:
            exported = export(args.study, args.export)
            print(f"exported {len(exported)} run(s) into {args.export}")
            return 0
        groups = load_study(args.study)
        if not groups:
            sys.exit(f"fairseq-codistill-report: --study {args.study}: no run with a study.json and a "
                     "validation record under it")
        print(write_study_report(args.out, groups))
        print(f"\nreport: {args.out / 'study.md'}")
        if args.readme is not None:
            from fairseq_codistill.tools import scenarios
            try:
                changed = scenarios.write_readme(args.readme, groups)
            except (OSError, ValueError) as e:
                sys.exit(f"fairseq-codistill-report: {e}")
            print(f"{args.readme}: which-method block {'updated' if changed else 'unchanged'}")
        return 0
    if not args.runs:
        sys.exit("fairseq-codistill-report: give RUN_DIR(s), or --study DIR")
    if args.export is not None:
        missing = [str(r) for r in args.runs if not logged_models(r)]
        if missing:
            sys.exit(f"fairseq-codistill-report: --export: no train.log and no model*/train.log in "
                     f"{', '.join(missing)}")
        exported = export_runs(args.runs, args.export)
        print(f"exported {len(exported)} run(s) into {args.export}")
        return 0
    if args.allreduce_workers is not None and args.allreduce_workers < 1:
        sys.exit(f"--allreduce-workers must be >= 1 (got {args.allreduce_workers})")
    try:
        series = [s for run in args.runs for s in load_run(run)]
    except FileNotFoundError as e:
        sys.exit(f"fairseq-codistill-report: {e}")
    rows = write_report(args.out, series, args.allreduce_workers)
    for warning in peerless(series):
        print(warning)
    print(text_table(rows))
    summary = comparison(rows)
    if summary:
        print("\n" + "\n  ".join(summary))
    print(f"\nreport: {args.out / 'report.md'}")
    if args.readme is not None:
        try:
            changed = pages.fill_block(args.readme, DEMO_BEGIN, DEMO_END, demo_block(rows, run_envs(args.runs)))
        except (OSError, ValueError) as e:
            sys.exit(f"fairseq-codistill-report: {e}")
        print(f"{args.readme}: demo block {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
