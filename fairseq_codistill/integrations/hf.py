"""Codistillation for Hugging Face Transformers: ``CodistillSeq2SeqTrainer``, a
``transformers.Seq2SeqTrainer`` whose models codistill through the same exchange.

    trainer = CodistillSeq2SeqTrainer(
        model=model, args=Seq2SeqTrainingArguments("runs/m0", ...), train_dataset=..., data_collator=...,
        codistill_dir="runs/x", codistill_id=0, codistill_num_models=2,
        codistill_interval=100, codistill_alpha=0.1)
    trainer.train()

The usual Trainer arguments, plus every ``--codistill-*`` option as a keyword with the
NMT task's defaults (``codistill_dir`` and ``codistill_id`` are required). In the host's
idiom: the penalty, alpha times the MSE of the logits over the label positions that count
(labels != -100), normalised as the model normalises its loss, is added in
``compute_loss``; the exchange steps once per optimizer step (a callback's
``on_step_begin``: gradient accumulation counts once); ``codistill_loss``, ``alpha``,
``num_peers`` and ``peer_staleness`` go into the training logs (``state.log_history``)
through ``log``; the exchange's state is ``codistill_state.pt`` in each checkpoint folder,
read back by ``train(resume_from_checkpoint=...)``. Peers are rebuilt from the
``model.config`` in their snapshot, without downloads. Under ``torchrun`` rank 0 publishes.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
import transformers
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from fairseq_codistill.codistillation import Codistillation, check_options
from fairseq_codistill.exchange.snapshot import SnapshotError

STATE_FILE = "codistill_state.pt"  # in each checkpoint-N folder
REQUIRED = ("codistill_dir", "codistill_id")
IGNORE_INDEX = -100  # label positions that do not count (Hugging Face's convention)


def model_meta(model) -> dict:
    """What a peer needs to rebuild this model: its class and config, and its vocabulary."""
    return {"architecture": type(model).__name__, "config": model.config.to_dict(),
            "vocab_size": model.config.vocab_size}


def build_peer(meta: dict) -> torch.nn.Module:
    """The peer's model class from its own config: no download, any architecture this
    transformers knows (a Marian student may codistill with another seq2seq model)."""
    config = transformers.CONFIG_MAPPING[meta["config"]["model_type"]].from_dict(meta["config"])
    return getattr(transformers, meta["architecture"])(config)


def check_peer(meta: dict, vocab_size: int) -> None:
    if meta.get("architecture") is None or not hasattr(transformers, str(meta["architecture"])):
        raise SnapshotError(f"the peer's model class {meta.get('architecture')!r} is not in this "
                            "transformers: it cannot be rebuilt here")
    if meta.get("vocab_size") != vocab_size:
        raise SnapshotError(f"the peer has a vocabulary of {meta.get('vocab_size')} but this model "
                            f"{vocab_size}: codistilled models must share one tokenizer")


class CodistillSeq2SeqTrainer(Seq2SeqTrainer):
    def __init__(self, *args, **kwargs):
        self.codistill_options = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("codistill_")}
        missing = [k for k in REQUIRED if k not in self.codistill_options]
        if missing:
            raise ValueError(f"{missing[0]} is required: "
                             + ("the directory or object store URL shared by all models"
                                if missing[0] == "codistill_dir" else "this model's id, 0 .. "
                                "codistill_num_models-1"))
        check_options(**self.codistill_options)  # before training, naming the keyword
        super().__init__(*args, **kwargs)
        self.codistillation: Optional[Codistillation] = None
        self._resume: Optional[str] = None
        self._penalties: List[float] = []  # of the micro-batches since the last log
        self.add_callback(_Exchange(self))

    # -- the penalty -------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")  # the parent may pop it
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        cd = self.codistillation
        if cd is not None and model.training and labels is not None:
            penalty = self.codistill_penalty(model, inputs, labels, outputs.logits, num_items_in_batch)
            self._penalties.append(penalty.detach().item())
            loss = loss + cd.alpha * penalty
        return (loss, outputs) if return_outputs else loss

    def codistill_penalty(self, model, inputs, labels, logits, num_items_in_batch=None) -> torch.Tensor:
        """The MSE of the logits against the peers', over the label positions that count,
        normalised as the model's own loss is: over the accumulated batch's label tokens
        (``num_items_in_batch``) when the model takes it, else over this batch's."""
        mask = labels.ne(IGNORE_INDEX)  # (B, T)
        peer_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        if "decoder_input_ids" not in peer_inputs:  # as the model makes them from the labels
            unwrapped = self.accelerator.unwrap_model(model)
            peer_inputs["decoder_input_ids"] = unwrapped.prepare_decoder_input_ids_from_labels(labels=labels)
        total = self.codistillation.penalty(logits, lambda peer: peer(**peer_inputs).logits,
                                            mask=mask, reduction="sum")
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            scale = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
            return total * scale / num_items_in_batch
        return total / mask.sum().clamp(min=1)

    # -- logs and checkpoints ------------------------------------------------------------
    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        if self.codistillation is not None and "loss" in logs:  # a training log
            if self._penalties:
                logs["codistill_loss"] = round(sum(self._penalties) / len(self._penalties), 6)
                self._penalties = []
            logs.update({k: round(v, 6) for k, v in self.codistillation.metrics().items()})
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self._resume = resume_from_checkpoint
        return super().train(resume_from_checkpoint, *args, **kwargs)


class _Exchange(TrainerCallback):
    """Starts the trainer's ``Codistillation`` when training begins (its lease, its state
    from the checkpoint resumed), steps it once per optimizer step, saves its state in
    every checkpoint folder, and closes it."""

    def __init__(self, trainer: CodistillSeq2SeqTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        trainer.codistillation = Codistillation(
            model, build_peer=build_peer, meta=model_meta(model),
            check_peer=lambda meta: check_peer(meta, model.config.vocab_size),
            **trainer.codistill_options)
        path = os.path.join(trainer._resume, STATE_FILE) if trainer._resume else None
        if path and os.path.isfile(path):
            trainer.codistillation.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_step_begin(self, args, state, control, **kwargs):
        # global_step counts optimizer steps: every micro-batch of one step sees the same
        self.trainer.codistillation.step(state.global_step, epoch=int(state.epoch or 0) + 1)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            torch.save(self.trainer.codistillation.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.codistillation.close()
