"""What the generated pages share (docs/options.md, docs/benchmarks.md): ``--out`` writes the
page, ``--check`` exits 1 when the committed one is not what would be written; and the
generated blocks of README.md, between a begin and an end marker."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from fairseq_codistill.exchange.storage import atomic_write


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


def fill_block(path: Path, begin: str, end: str, lines: List[str], flag: str = "--readme") -> bool:
    """Replace the block of the file ``path`` between the markers ``begin`` and ``end``
    (both kept) by ``lines``; True if the file changed. A file without them is an error,
    named by ``flag``."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{flag} {path}: no '{begin}' ... '{end}' block to fill")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    new = head + "\n".join([begin, *lines, end]) + tail
    if new != text:
        atomic_write(path, lambda f: f.write(new.encode()))
    return new != text
