"""fairseq-codistill-teacher: publish a trained checkpoint as a peer that never changes,
the teacher of word-level knowledge distillation.

    fairseq-codistill-teacher big/checkpoint_best.pt --codistill-dir kd/exchange --codistill-id 1
    fairseq-train DATA --user-dir fairseq_codistill --task codistill_translation \\
        --criterion codistill_ce --codistill-dir kd/exchange --codistill-id 0 \\
        --codistill-num-models 2 --codistill-loss kl --codistill-alpha-schedule constant ...

Model 0 distils from model 1's newest snapshot. With no job training as model 1, that
snapshot is the checkpoint published here, read once at the start and never replaced: the
penalty is then distillation from a fixed, trained teacher on the student's own batches
(word-level KD, Kim & Rush 2016, with ``--codistill-loss kl``; the logits' MSE with the
default loss), and the student may have another depth or width than the teacher, as in any
codistilled pair. This is the two-phase alternative to codistilling a small model beside a
big one: the big model first, then the small one from it.

The snapshot carries what a peer needs to rebuild the teacher: its model config from the
checkpoint and the fingerprint of the target dictionary (``dict.TGT.txt`` of the
checkpoint's data directory, or of ``--data``), which the student checks against its own.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional

from fairseq_codistill import options
from fairseq_codistill.exchange.snapshot import SNAPSHOT_DTYPES, cast_state_dict, write_snapshot
from fairseq_codistill.fairseq_plugin.checkpoints import load_checkpoint_state


def _get(cfg, *names):
    """cfg.names[0].names[1]... of a DictConfig, dict or Namespace; None where missing."""
    for name in names:
        if cfg is None:
            return None
        cfg = cfg.get(name) if hasattr(cfg, "get") else getattr(cfg, name, None)
    return cfg


def publish_teacher(checkpoint, root, model_id: int, dtype: str = "fp16",
                    data: Optional[str] = None) -> str:
    """Publish ``checkpoint``'s weights as model ``model_id``'s snapshot in ``root`` (a
    directory or fsspec URL); returns the snapshot's key. Raises ``ValueError`` naming
    what is missing."""
    from fairseq.data import Dictionary, data_utils

    from fairseq_codistill.fairseq_plugin.task import model_meta

    state = load_checkpoint_state(checkpoint, keys=("model", "cfg", "args", "optimizer_history"))
    cfg = state["cfg"] if state["cfg"] is not None else state["args"]
    model_cfg = _get(cfg, "model") if state["cfg"] is not None else cfg
    if state["model"] is None or model_cfg is None:
        raise ValueError(f"{checkpoint}: not a fairseq checkpoint (no model or no config)")
    data = data or _get(cfg, "task", "data") or _get(cfg, "data")
    if not data:
        raise ValueError(f"{checkpoint}: its config names no data directory; pass --data DATA_BIN")
    data = str(data).split(":")[0]
    if not Path(data).is_dir():
        raise ValueError(f"--data: {data} is not a directory (the teacher's data-bin, with its "
                         "dict.TGT.txt)")
    # fairseq's translation task finds the languages from the file names when not given
    target = _get(cfg, "task", "target_lang") or _get(cfg, "target_lang") or \
        data_utils.infer_language_pair(data)[1]
    if not target:
        raise ValueError(f"--data: no target language found in {data} (no train.SRC-TGT.* files)")
    dict_path = Path(data) / f"dict.{target}.txt"
    if not dict_path.is_file():
        raise ValueError(f"--data: {dict_path} not found (the teacher's target dictionary)")
    history = state["optimizer_history"] or [{}]
    num_updates = int(history[-1].get("num_updates", 0))
    weights = cast_state_dict(dict(state["model"]), dtype)
    return write_snapshot(root, model_id, num_updates, weights, dtype=dtype,
                          meta=model_meta(model_cfg, Dictionary.load(str(dict_path))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fairseq-codistill-teacher",
        description="Publish a trained fairseq checkpoint as model ID's snapshot: a teacher "
                    "that a model trained with --codistill-dir DIR distils from.")
    parser.add_argument("checkpoint", type=Path, help="the teacher's checkpoint (checkpoint_best.pt)")
    parser.add_argument("--codistill-dir", required=True, help=options.DIR.help)
    parser.add_argument("--codistill-id", type=int, default=1,
                        help="the teacher's model id (default 1; the student trains as 0)")
    parser.add_argument("--codistill-snapshot-dtype", default="fp16", choices=tuple(SNAPSHOT_DTYPES),
                        help="dtype of the published weights (default fp16)")
    parser.add_argument("--data", default=None,
                        help="the data-bin with the teacher's dict.TGT.txt (default: the one "
                             "in the checkpoint's config)")
    args = parser.parse_args(argv)
    if args.codistill_id < 0:
        parser.error(f"--codistill-id: must be >= 0 (got {args.codistill_id})")
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint: {args.checkpoint} not found")
    try:
        key = publish_teacher(args.checkpoint, args.codistill_dir, args.codistill_id,
                              args.codistill_snapshot_dtype, args.data)
    except ValueError as e:
        print(f"fairseq-codistill-teacher: {e}", file=sys.stderr)
        return 2
    print(f"published {args.checkpoint} as model {args.codistill_id}: {args.codistill_dir}/{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
