#!/usr/bin/env python3
"""A parallel corpus English <-> LANG from the gettext catalogs installed on this machine.

Every ``/usr/share/locale/LANG/LC_MESSAGES/*.mo`` holds the human translations of one
program's messages: ``msgid`` is the English string, ``msgstr`` its translation. We keep
one pair per source string, drop what is not a sentence to translate (multi-line help
texts, strings that are only placeholders or punctuation, untranslated copies), and split
the rest with a seeded shuffle into train / valid / test.

    python data-prep/gettext_corpus.py --lang de --direction de-en --out DIR

writes ``DIR/{train,valid,test}.{de,en}`` (one sentence a line, aligned) and exits
non-zero, saying why, when the catalogs give fewer than ``--min-pairs`` pairs.
"""
import argparse
import os
import random
import re
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

MO_MAGIC = 0x950412DE
CONTEXT_SEP = "\x04"  # msgctxt EOT msgid
PLURAL_SEP = "\x00"   # msgid NUL msgid_plural, msgstr[0] NUL msgstr[1] ...

# printf (%s, %1$d, %-10.3lf, %%), brace ({0}, {name}), shell (${VAR}, $VAR) placeholders
PLACEHOLDER = re.compile(r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.(\d+|\*))?(hh|h|ll|l|L|q|j|z|t|I64)?[a-zA-Z%]"
                         r"|\{[^{}]*\}|\$\{?[A-Za-z_]\w*\}?")
LETTER = re.compile(r"[^\W\d_]")
WHITESPACE = re.compile(r"\s+")


def read_mo(path: Path) -> Iterator[Tuple[str, str]]:
    """(msgid, msgstr) of every translated entry of a .mo file, context and plurals removed.

    A reader of our own rather than ``gettext.GNUTranslations``: that class decodes the
    whole catalog with its declared charset and gives up on the first string that does
    not decode (some installed catalogs declare UTF-8 but hold Latin-1 bytes), whereas
    here only the bad entry is skipped. The format is two tables of (length, offset).
    """
    data = path.read_bytes()
    if len(data) < 28:
        return
    for order in "<>":
        magic, _revision, n, originals, translations = struct.unpack_from(order + "5I", data)
        if magic == MO_MAGIC:
            break
    else:
        return
    entries = []
    for i in range(n):
        id_len, id_off = struct.unpack_from(order + "2I", data, originals + 8 * i)
        str_len, str_off = struct.unpack_from(order + "2I", data, translations + 8 * i)
        entries.append((data[id_off:id_off + id_len], data[str_off:str_off + str_len]))
    charset = "utf-8"
    for msgid, msgstr in entries:
        if msgid == b"":  # the header: "Content-Type: text/plain; charset=..."
            found = re.search(rb"charset=([-\w]+)", msgstr)
            charset = found.group(1).decode("ascii") if found else charset
    for msgid, msgstr in entries:
        if msgid == b"" or msgstr == b"":
            continue
        try:
            source, target = msgid.decode(charset), msgstr.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
        source = source.split(CONTEXT_SEP)[-1].split(PLURAL_SEP)[0]
        yield source, target.split(PLURAL_SEP)[0]


def reject_reason(english: str, other: str, max_chars: int) -> str:
    """Why a pair is not kept ("" when it is)."""
    if "\n" in english.strip() or "\n" in other.strip():
        return "multi-line"
    english, other = normalize(english), normalize(other)
    if not english or not other:
        return "empty"
    if not LETTER.search(PLACEHOLDER.sub("", english)) or not LETTER.search(PLACEHOLDER.sub("", other)):
        return "placeholders only"
    if english == other:
        return "untranslated"
    if len(english) > max_chars or len(other) > max_chars:
        return "too long"
    return ""


def normalize(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def collect(catalogs: List[Path], src_is_english: bool, max_chars: int) -> Tuple[List[Tuple[str, str]], Counter]:
    """Pairs (source, target), one per distinct source string, first catalog first."""
    pairs: Dict[str, str] = {}
    stats: Counter = Counter()
    for catalog in catalogs:
        for english, other in read_mo(catalog):
            stats["entries"] += 1
            reason = reject_reason(english, other, max_chars)
            if reason:
                stats[reason] += 1
                continue
            english, other = normalize(english), normalize(other)
            source, target = (english, other) if src_is_english else (other, english)
            if source in pairs:
                stats["duplicate source"] += 1
                continue
            pairs[source] = target
    return list(pairs.items()), stats


def split(pairs: List[Tuple[str, str]], valid: int, test: int, seed: int,
          train_fraction: float = 1.0) -> Dict[str, List[Tuple[str, str]]]:
    """valid, test, then train (written last: its presence marks a finished split). A
    train fraction keeps the same valid and test pairs and the first part of train."""
    order = sorted(pairs)  # independent of catalog order, then shuffled by the seed
    random.Random(seed).shuffle(order)
    train = order[valid + test:]
    train = train[:max(1, round(len(train) * train_fraction))]
    return {"valid": order[:valid], "test": order[valid:valid + test], "train": train}


def write_split(out: Path, name: str, pairs: List[Tuple[str, str]], src: str, tgt: str) -> None:
    """NAME.SRC and NAME.TGT, each under a temporary name until complete (TGT last)."""
    for lang, side in ((src, 0), (tgt, 1)):
        tmp = out / f"{name}.{lang}.tmp"
        tmp.write_text("".join(pair[side] + "\n" for pair in pairs), encoding="utf-8")
        os.replace(tmp, out / f"{name}.{lang}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", default="de", help="the non-English language (a /usr/share/locale folder)")
    p.add_argument("--direction", default=None,
                   help="SRC-TGT, one side en (default: LANG-en, translating into English)")
    p.add_argument("--locale-dir", default="/usr/share/locale", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--valid", type=int, default=1000, help="pairs held out for validation")
    p.add_argument("--test", type=int, default=1000, help="pairs held out for the BLEU test")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="keep this fraction of the training pairs (valid and test unchanged): "
                        "the paper's less-data regime, where models overfit")
    p.add_argument("--max-chars", type=int, default=200,
                   help="longer strings (long help texts) are dropped: they dominate CPU batches")
    p.add_argument("--min-pairs", type=int, default=10000,
                   help="fail when fewer pairs are found: a tiny corpus would teach nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    src, tgt = (args.direction or f"{args.lang}-en").split("-")
    if "en" not in (src, tgt) or args.lang not in (src, tgt):
        sys.exit(f"--direction {src}-{tgt} must pair en with --lang {args.lang}")
    catalogs = sorted((args.locale_dir / args.lang / "LC_MESSAGES").glob("*.mo"))
    pairs, stats = collect(catalogs, src_is_english=src == "en", max_chars=args.max_chars)
    print(f"{len(catalogs)} catalogs in {args.locale_dir / args.lang / 'LC_MESSAGES'}: "
          f"{stats['entries']} translated entries, {len(pairs)} pairs kept; dropped: "
          + (", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "entries") or "none"))
    if not 0 < args.train_fraction <= 1:
        sys.exit(f"--train-fraction must be in (0, 1] (got {args.train_fraction})")
    needed = max(args.min_pairs, args.valid + args.test + 1)
    if len(pairs) < needed:
        print(f"error: only {len(pairs)} usable {src}-{tgt} pairs from {len(catalogs)} gettext "
              f"catalogs (need --min-pairs {needed}). Install more translated software or "
              f"language packs for '{args.lang}' (e.g. apt-get install language-pack-{args.lang}), "
              "or pick another language.", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in split(pairs, args.valid, args.test, args.seed, args.train_fraction).items():
        write_split(args.out, name, part, src, tgt)
        print(f"  {name}: {len(part)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
