"""eval.json from fairseq-generate output: sacrebleu BLEU and chrF, and the validation NLL.

    fairseq-generate DATA --path CKPT[:CKPT2...] --gen-subset test --post-process sentencepiece \\
        --user-dir fairseq_codistill > gen.txt
    fairseq-generate DATA --path CKPT[:CKPT2...] --gen-subset valid --score-reference \\
        --user-dir fairseq_codistill > score.txt
    python -m fairseq_codistill.tools.evaluate --generate gen.txt --reference raw/test.en \\
        --score-reference score.txt --checkpoint CKPT --out eval.json

BLEU compares the detokenized hypotheses (``D-`` lines) with the raw reference text, not
with fairseq's ``T-`` lines, whose words outside the dictionary became ``<unk>``. The NLL
is that of the references under the model (an ensemble averages the models'
probabilities), per target token in base 2 as fairseq logs ``valid_nll_loss``: fairseq
prints ``P-`` positional scores as base-2 log-probabilities, end of sentence included.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from fairseq_codistill.exchange.storage import atomic_write


def read_lines(path: Path, tag: str) -> Dict[int, str]:
    """``tag``-id -> the rest of its line, from fairseq-generate output (first hypothesis)."""
    out: Dict[int, str] = {}
    prefix = f"{tag}-"
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith(prefix):
                continue
            key, _, rest = line.rstrip("\n").partition("\t")
            index = key[len(prefix):]
            if index.isdigit():
                out.setdefault(int(index), rest)
    return out


def hypotheses(generate_output: Path) -> Dict[int, str]:
    """Sentence id -> detokenized hypothesis (``D-id<TAB>score<TAB>text``)."""
    return {i: rest.partition("\t")[2] for i, rest in read_lines(generate_output, "D").items()}


def reference_nll(score_output: Path) -> float:
    """Mean NLL per target token, base 2, from a ``--score-reference`` run's P- lines."""
    total, count = 0.0, 0
    for scores in read_lines(score_output, "P").values():
        values = [float(v) for v in scores.split()]
        total -= sum(values)
        count += len(values)
    if count == 0:
        raise ValueError(f"{score_output}: no P- lines (run fairseq-generate with --score-reference)")
    return total / count


def corpus_bleu(hyps: Dict[int, str], references: List[str]) -> Dict[str, object]:
    import sacrebleu

    if len(hyps) != len(references) or set(hyps) != set(range(len(references))):
        missing = sorted(set(range(len(references))) - set(hyps))[:5]
        raise ValueError(f"{len(hyps)} hypotheses for {len(references)} references "
                         f"(first missing ids: {missing}): was generation cut short, or "
                         "run without --required-batch-size-multiple 1? (fairseq drops a last "
                         "batch smaller than that multiple, 8 by default)")
    ordered = [hyps[i] for i in range(len(references))]
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    return {"bleu": round(bleu.corpus_score(ordered, [references]).score, 2),
            "chrf": round(chrf.corpus_score(ordered, [references]).score, 2),
            "sacrebleu": str(bleu.get_signature()), "sacrebleu_chrf": str(chrf.get_signature())}


def evaluate(generate_output: Optional[Path], reference: Optional[Path],
             score_output: Optional[Path], split: str = "test",
             checkpoint: Optional[str] = None) -> dict:
    result: dict = {}
    if generate_output is not None:
        if reference is None:
            raise ValueError("--reference is needed with --generate")
        refs = reference.read_text(encoding="utf-8").splitlines()
        result.update(corpus_bleu(hypotheses(generate_output), refs))
        result.update(split=split, num_sentences=len(refs))
    if score_output is not None:
        result["valid_nll"] = round(reference_nll(score_output), 4)
    if checkpoint is not None:
        result["checkpoint"] = checkpoint
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_codistill.tools.evaluate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--generate", type=Path, help="fairseq-generate output with D- lines")
    p.add_argument("--reference", type=Path, help="raw reference text, one line per sentence id")
    p.add_argument("--split", default="test", help="the split --generate translated")
    p.add_argument("--score-reference", type=Path,
                   help="fairseq-generate --score-reference output on the validation split")
    p.add_argument("--checkpoint", help="what was evaluated (recorded in eval.json)")
    p.add_argument("--same-as", type=Path,
                   help="an eval.json of the same checkpoint under another name (fairseq's "
                        "checkpoint_best.pt when it is checkpoint_last.pt): its scores, no decode")
    p.add_argument("--out", type=Path, required=True, help="eval.json to write")
    args = p.parse_args(argv)
    if args.same_as is not None and (args.generate or args.score_reference):
        p.error("--same-as takes the scores of another eval.json: no --generate or --score-reference")
    if args.same_as is None and args.generate is None and args.score_reference is None:
        p.error("give --generate and/or --score-reference, or --same-as")
    try:
        if args.same_as is not None:
            result = json.loads(args.same_as.read_text())
            result["same_as"] = result.get("checkpoint")
            if args.checkpoint is not None:
                result["checkpoint"] = args.checkpoint
        else:
            result = evaluate(args.generate, args.reference, args.score_reference, args.split,
                              args.checkpoint)
    except (OSError, ValueError) as e:
        sys.exit(f"evaluate: {e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # whole or not at all: a report may read it meanwhile
    atomic_write(args.out, lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
