"""fairseq-train's JSON log lines: the one parser of the report, the launcher's progress
view, the demo and the tests.

With ``--log-format json`` fairseq prints each record as ``<time> | INFO | <tag> | {...}``
with every value a string; the epoch records (tag ``train``) prefix their keys with
``train_`` and validation records (tag ``valid``, or the subset's name) with ``valid_``.
Standard library only: the launcher must not import torch to show progress.

    python -m fairseq_codistill.tools.logs LOG TAG KEY   # KEY of the newest TAG record in LOG
    python -m fairseq_codistill.tools.logs LOG TAG KEY TAG KEY ...   # one line, "-" where missing
"""
import json
import re
import sys
from typing import Dict, Iterator, Optional, Tuple

TAGS = ("train_inner", "train", "valid")
_RECORD = re.compile(r"\| (train_inner|train|valid) \| (\{.*\})\s*$")
_PREFIX = {"train_inner": "", "train": "train_", "valid": "valid_"}


def number(value):
    """fairseq logs numbers as strings: "5.25" -> 5.25; anything else is kept."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def parse_line(line: str) -> Optional[Tuple[str, Dict[str, object]]]:
    """(tag, record) of one JSON log line, keys without their train_/valid_ prefix, values
    as numbers where they are and ``nll_loss`` always there; None for any other line, or one
    still being written."""
    match = _RECORD.search(line)
    if not match:
        return None
    try:
        record = json.loads(match.group(2))
    except ValueError:
        return None
    tag, prefix = match.group(1), _PREFIX[match.group(1)]
    record = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): number(v)
              for k, v in record.items()}
    if "nll_loss" not in record and "loss" in record:
        # fairseq's cross_entropy logs its NLL as loss alone (the two are the same); the
        # translation criteria that log a loss other than the NLL log nll_loss beside it
        record["nll_loss"] = record["loss"]
    return tag, record


def records(text: str, tag: Optional[str] = None) -> Iterator[Tuple[str, Dict[str, object]]]:
    """Every (tag, record) of a log's text, or only those of ``tag``."""
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is not None and (tag is None or parsed[0] == tag):
            yield parsed


def last_value(text: str, tag: str, key: str):
    """``key`` of the newest ``tag`` record that has it, or None."""
    value = None
    for _, record in records(text, tag):
        value = record.get(key, value)
    return value


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path, pairs = (args[0], list(zip(args[1::2], args[2::2]))) if args else ("", [])
    if len(args) < 3 or len(args) % 2 == 0 or any(tag not in TAGS for tag, _ in pairs):
        print(f"usage: python -m fairseq_codistill.tools.logs LOG {{{','.join(TAGS)}}} KEY [TAG KEY]...",
              file=sys.stderr)
        return 2
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    # One process for all of a log's figures: the demo asks every few seconds.
    values = [last_value(text, tag, key) for tag, key in pairs]
    shown = ["-" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    if len(pairs) > 1:
        print(" ".join(shown))
    elif values[0] is not None:
        print(shown[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
