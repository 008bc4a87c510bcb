#!/usr/bin/env python3
"""Text steps of the NMT data-prep scripts (prepare-iwslt14.sh, prepare-wmt16-en-de.sh).

Standard library and sentencepiece only. Every command writes its outputs through a
temporary file and a rename, so a step interrupted half-way leaves no output behind and
the shell scripts can skip a step whose output exists.

    common_text.py ted-tags IN OUT [--lowercase]          TED train.tags file -> sentences
    common_text.py ted-xml OUT XML... [--lowercase]       <seg> contents of XML files, concatenated
    common_text.py clean IN OUT --langs de en             drop empty, long, length-mismatched pairs
    common_text.py holdout IN TRAIN VALID --langs de en   every 23rd pair -> VALID, the rest -> TRAIN
    common_text.py spm-train --model-prefix P --vocab-size N FILE...
    common_text.py spm-encode --model M IN OUT            raw lines -> space-separated pieces

IN/OUT/TRAIN/VALID of the pair commands are prefixes: ``IN.de`` and ``IN.en``.
"""
import argparse
import html
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Sequence

# TED metadata lines of train.tags.*: dropped. fairseq's prepare-iwslt14.sh drops the first
# three; the others only occur in later IWSLT releases (fairseq's IWSLT'17 script drops them).
TED_DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>", "<speaker>", "<reviewer", "<translator",
                    "<doc", "</doc>")
# Title and description keep their text (as fairseq does): the 1-in-23 valid split then
# falls on the same lines as fairseq's.
TED_STRIPPED_TAGS = re.compile(r"</?(title|description)>")
SEG = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')


@contextmanager
def atomic_output(path: str):
    """A text file that appears under ``path`` only once it is completely written."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write_lines(path: str, lines: Iterable[str]) -> int:
    count = 0
    with atomic_output(path) as f:
        for line in lines:
            f.write(line + "\n")
            count += 1
    return count


def ted_tags(lines: Iterable[str], lowercase: bool = False) -> Iterator[str]:
    """Sentences of a TED ``train.tags`` file: metadata lines dropped, title tags removed."""
    for line in lines:
        line = line.strip()
        if line.startswith(TED_DROPPED_TAGS):
            continue
        line = TED_STRIPPED_TAGS.sub("", line).strip()
        yield line.lower() if lowercase else line


def ted_xml(lines: Iterable[str], lowercase: bool = False) -> Iterator[str]:
    """The ``<seg id="N">`` contents of a TED dev/test XML file, XML entities decoded and
    the typographic apostrophe made plain (as fairseq's script does)."""
    for line in lines:
        match = SEG.search(line)
        if match:
            text = html.unescape(match.group(1)).replace("\u2019", "'")
            yield text.lower() if lowercase else text


def keep_pair(src: str, tgt: str, ratio: float, min_words: int, max_words: int) -> bool:
    """Moses clean-corpus-n: both sides within [min, max] words, length ratio <= ratio."""
    n, m = len(src.split()), len(tgt.split())
    if not (min_words <= n <= max_words and min_words <= m <= max_words):
        return False
    return n <= ratio * m and m <= ratio * n


def read_pair(prefix: str, langs: Sequence[str]):
    sides = [read_lines(f"{prefix}.{lang}") for lang in langs]
    if len(sides[0]) != len(sides[1]):
        sys.exit(f"common_text.py: {prefix}.{langs[0]} has {len(sides[0])} lines but "
                 f"{prefix}.{langs[1]} has {len(sides[1])}: the two sides are not parallel")
    return sides


def cmd_ted_tags(args) -> None:
    n = write_lines(args.output, ted_tags(read_lines(args.input), args.lowercase))
    print(f"{args.output}: {n} sentences from {args.input}")


def cmd_ted_xml(args) -> None:
    def segments():
        for path in args.inputs:
            yield from ted_xml(read_lines(path), args.lowercase)

    n = write_lines(args.output, segments())
    print(f"{args.output}: {n} segments from {len(args.inputs)} files")


def cmd_clean(args) -> None:
    src, tgt = read_pair(args.input, args.langs)
    kept = [(s.strip(), t.strip()) for s, t in zip(src, tgt)
            if keep_pair(s, t, args.ratio, args.min_words, args.max_words)]
    for i, lang in enumerate(args.langs):
        write_lines(f"{args.output}.{lang}", (pair[i] for pair in kept))
    print(f"clean: kept {len(kept)} of {len(src)} pairs")


def cmd_holdout(args) -> None:
    sides = read_pair(args.input, args.langs)
    for lang, lines in zip(args.langs, sides):
        # line numbers from 1, as awk's NR in fairseq's script
        write_lines(f"{args.valid}.{lang}", (l for i, l in enumerate(lines, 1) if i % args.every == 0))
        write_lines(f"{args.train}.{lang}", (l for i, l in enumerate(lines, 1) if i % args.every))
    print(f"holdout: {len(sides[0]) // args.every} valid, "
          f"{len(sides[0]) - len(sides[0]) // args.every} train pairs")


def cmd_spm_train(args) -> None:
    import sentencepiece as spm

    spm.set_random_generator_seed(args.seed)  # the sentence sample: same data, same model
    tmp_prefix = f"{args.model_prefix}.tmp{os.getpid()}"
    spm.SentencePieceTrainer.train(
        input=",".join(args.inputs),
        model_prefix=tmp_prefix,
        vocab_size=args.vocab_size,
        model_type="bpe",
        character_coverage=1.0,  # German and English have few characters: keep them all
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=args.threads,
        minloglevel=2,
    )
    os.replace(f"{tmp_prefix}.vocab", f"{args.model_prefix}.vocab")
    os.replace(f"{tmp_prefix}.model", f"{args.model_prefix}.model")  # the step's output: last
    print(f"sentencepiece: {args.vocab_size}-piece joint BPE model {args.model_prefix}.model")


def cmd_spm_encode(args) -> None:
    import sentencepiece as spm

    model = spm.SentencePieceProcessor(model_file=args.model)
    lines = read_lines(args.input)
    with atomic_output(args.output) as f:
        for start in range(0, len(lines), 10000):
            for pieces in model.encode(lines[start:start + 10000], out_type=str):
                f.write(" ".join(pieces) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("ted-tags", help="sentences of a TED train.tags file")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--lowercase", action="store_true")
    c.set_defaults(run=cmd_ted_tags)

    c = sub.add_parser("ted-xml", help="<seg> contents of TED XML files, concatenated in order")
    c.add_argument("output")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--lowercase", action="store_true")
    c.set_defaults(run=cmd_ted_xml)

    c = sub.add_parser("clean", help="Moses clean-corpus-n on a parallel corpus")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--langs", nargs=2, required=True)
    c.add_argument("--ratio", type=float, default=1.5)
    c.add_argument("--min-words", type=int, default=1)
    c.add_argument("--max-words", type=int, default=175)
    c.set_defaults(run=cmd_clean)

    c = sub.add_parser("holdout", help="every N-th pair to VALID, the others to TRAIN")
    c.add_argument("input")
    c.add_argument("train")
    c.add_argument("valid")
    c.add_argument("--langs", nargs=2, required=True)
    c.add_argument("--every", type=int, default=23)
    c.set_defaults(run=cmd_holdout)

    c = sub.add_parser("spm-train", help="a joint sentencepiece BPE model from raw text files")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--model-prefix", required=True)
    c.add_argument("--vocab-size", type=int, required=True)
    c.add_argument("--input-sentence-size", type=int, default=2000000,
                   help="sentences sampled for training (0: all)")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--threads", type=int, default=4)
    c.set_defaults(run=cmd_spm_train)

    c = sub.add_parser("spm-encode", help="raw lines to space-separated pieces")
    c.add_argument("--model", required=True)
    c.add_argument("input")
    c.add_argument("output")
    c.set_defaults(run=cmd_spm_encode)

    args = p.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
