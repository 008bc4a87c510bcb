"""fairseq-codistill-average: average the parameters of the last N checkpoints.

    fairseq-codistill-average --inputs SAVE_DIR --num-epoch-checkpoints 10 --output avg.pt
    fairseq-codistill-average --inputs a.pt b.pt --output avg.pt

fairseq's ``scripts/average_checkpoints.py`` is not installed with its pip package; this is
the same operation (Vaswani et al. 2017; Ott et al. 2018 average the last 10 epochs) for
torch >= 2.6: checkpoints are read with ``weights_only=True`` (fairseq's one extra global
allowlisted) and memory-mapped, so only one running sum is held in memory.

The output is the newest input with its ``model`` replaced by the average, accumulated in
float64 and stored in at least float32 (an fp16 checkpoint's average keeps the precision
the sum gained). The optimizer state is dropped: it belongs to the newest weights, not to
the average, and is most of the file; fairseq-generate does not read it.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from fairseq_codistill.fairseq_plugin.checkpoints import load_checkpoint_state
from fairseq_codistill.exchange.storage import atomic_write

EPOCH_CHECKPOINT = re.compile(r"checkpoint(\d+)\.pt$")
UPDATE_CHECKPOINT = re.compile(r"checkpoint_\d+_(\d+)\.pt$")


def last_checkpoints(directory, n: int, by_update: bool = False,
                     upper_bound: Optional[int] = None) -> List[Path]:
    """The ``n`` newest ``checkpointEPOCH.pt`` (or ``checkpoint_EPOCH_UPDATE.pt``) files of
    ``directory``, newest first, skipping those past ``upper_bound``."""
    pattern = UPDATE_CHECKPOINT if by_update else EPOCH_CHECKPOINT
    found = []
    for path in Path(directory).iterdir():
        match = pattern.fullmatch(path.name)
        if match and (upper_bound is None or int(match.group(1)) <= upper_bound):
            found.append((int(match.group(1)), path))
    found.sort(reverse=True)
    if len(found) < n:
        kind = "update" if by_update else "epoch"
        raise ValueError(f"{directory} has {len(found)} {kind} checkpoints "
                         f"({pattern.pattern}), fewer than the {n} to average: lower "
                         f"--num-{kind}-checkpoints or train longer")
    return [path for _, path in found[:n]]


def average_checkpoints(paths: Sequence) -> dict:
    """The newest checkpoint (``paths[0]``) with the mean of all the models' parameters."""
    if not paths:
        raise ValueError("no checkpoint to average")
    newest = load_checkpoint_state(paths[0])
    sums: Dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):
        model = newest["model"] if i == 0 else load_checkpoint_state(path)["model"]
        if sums and model.keys() != sums.keys():
            raise ValueError(f"{path} holds other parameters than {paths[0]}: "
                             f"{sorted(set(model) ^ set(sums))[:5]}")
        for name, tensor in model.items():
            if not tensor.is_floating_point():
                sums.setdefault(name, tensor)  # step counters, versions: the newest's
            elif name not in sums:
                sums[name] = tensor.to(torch.float64, copy=True)
            elif tensor.shape != sums[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                 f"{tuple(sums[name].shape)} in {paths[0]}")
            else:
                sums[name] += tensor.to(torch.float64)
    averaged = {}
    for name, total in sums.items():
        original = newest["model"][name]
        if original.is_floating_point():
            total = (total / len(paths)).to(torch.promote_types(original.dtype, torch.float32))
        averaged[name] = total
    state = {key: value for key, value in newest.items() if key != "last_optimizer_state"}
    state["model"] = averaged
    return state


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="fairseq-codistill-average",
        description="Average the parameters of fairseq checkpoints (the last N of a directory, "
                    "or the files given).")
    p.add_argument("--inputs", nargs="+", required=True,
                   help="checkpoint files, or one directory with --num-*-checkpoints")
    p.add_argument("--output", required=True, help="the averaged checkpoint to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--num-epoch-checkpoints", type=int,
                       help="average the last N checkpointEPOCH.pt of the directory")
    which.add_argument("--num-update-checkpoints", type=int,
                       help="average the last N checkpoint_EPOCH_UPDATE.pt of the directory")
    p.add_argument("--checkpoint-upper-bound", type=int,
                   help="ignore checkpoints past this epoch (or update)")
    args = p.parse_args(argv)
    n = args.num_epoch_checkpoints or args.num_update_checkpoints
    if n is not None:
        if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
            p.error("--num-epoch-checkpoints / --num-update-checkpoints take one directory "
                    f"as --inputs (got {args.inputs})")
        if n < 1:
            p.error(f"the number of checkpoints to average must be >= 1 (got {n})")
    elif args.checkpoint_upper_bound is not None:
        p.error("--checkpoint-upper-bound goes with --num-epoch-checkpoints or "
                "--num-update-checkpoints")
    return args, n


def main(argv=None) -> int:
    args, n = parse_args(argv)
    try:
        if n is None:
            paths = [Path(p) for p in args.inputs]
        else:
            paths = last_checkpoints(args.inputs[0], n, by_update=args.num_update_checkpoints is not None,
                                     upper_bound=args.checkpoint_upper_bound)
        state = average_checkpoints(paths)
    except (ValueError, OSError) as e:
        print(f"fairseq-codistill-average: {e}", file=sys.stderr)
        return 1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda f: torch.save(state, f))
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) "
          f"into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
