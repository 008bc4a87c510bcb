"""fairseq logs written by hand, with the numbers a test chooses: the records that
fairseq_codistill.tools.runs reads from a run's train.log, and its eval files."""
import json

T = "2026-12-06 10:00:00 | INFO"


def write_train_log(d, records, params=None, done_seconds=None):
    """``d``/train.log: ``records`` in order, each ("train_inner", {key: value}) or
    ("valid", {key: value}) (fairseq prefixes a validation's keys with "valid_"); the
    parameter count first and fairseq's "done training" line last, where given."""
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    if params is not None:
        lines.append(f"{T} | fairseq_cli.train | num. shared model params: {params:,} (num. trained: {params:,})")
    for kind, record in records:
        prefix = "valid_" if kind == "valid" else ""
        lines.append(f"{T} | {kind} | " + json.dumps({prefix + k: str(v) for k, v in record.items()}))
    if done_seconds is not None:
        lines.append(f"{T} | fairseq_cli.train | done training in {done_seconds:.1f} seconds")
    (d / "train.log").write_text("\n".join(lines) + "\n")


def write_eval(d, bleu, chrf, best_bleu, best_chrf):
    """eval.json (checkpoint_last.pt) and eval-best.json (checkpoint_best.pt)."""
    (d / "eval.json").write_text(json.dumps({"bleu": bleu, "chrf": chrf}))
    (d / "eval-best.json").write_text(json.dumps({"bleu": best_bleu, "chrf": best_chrf}))
