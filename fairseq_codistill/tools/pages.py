"""What the generated pages share (docs/options.md, docs/benchmarks.md): ``--out`` writes the
page, ``--check`` exits 1 when the committed one is not what would be written."""
import argparse
import sys
from pathlib import Path
from typing import Optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    where.add_argument("--check", type=Path, help="exit 1 if this file is not what would be written")


def write_or_check(text: str, out: Optional[Path], check: Optional[Path], module: str) -> int:
    if check:
        if not check.exists() or check.read_text() != text:
            print(f"{check} is stale: python -m {module} --out {check}", file=sys.stderr)
            return 1
        return 0
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
