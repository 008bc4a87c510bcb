#!/usr/bin/env python3
"""sentencepiece from the command line, through its Python API (pip's sentencepiece
ships no spm_train / spm_encode binaries).

    python data-prep/spm.py train --model-prefix DIR/spm --vocab-size 8000 FILE...
    python data-prep/spm.py encode --model DIR/spm.model < raw.txt > pieces.txt
"""
import argparse
import sys

import sentencepiece as spm


def train(args: argparse.Namespace) -> None:
    spm.set_random_generator_seed(args.seed)  # the sentence sampling: same data, same model
    spm.SentencePieceTrainer.train(
        input=",".join(args.inputs),
        model_prefix=args.model_prefix,
        vocab_size=args.vocab_size,
        character_coverage=1.0,  # a European pair has few characters: keep them all
        model_type="unigram",
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=True,
        minloglevel=2,  # its per-iteration progress goes nowhere useful
        num_threads=args.threads,
    )


def encode(args: argparse.Namespace) -> None:
    model = spm.SentencePieceProcessor(model_file=args.model)
    for line in sys.stdin:
        sys.stdout.write(" ".join(model.encode(line.rstrip("\n"), out_type=str)) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn a joint model from raw text files")
    t.add_argument("inputs", nargs="+")
    t.add_argument("--model-prefix", required=True)
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--input-sentence-size", type=int, default=1000000)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(run=train)
    e = sub.add_parser("encode", help="raw lines on stdin to space-separated pieces on stdout")
    e.add_argument("--model", required=True)
    e.set_defaults(run=encode)
    args = p.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
