"""The ``codistill_translation`` task: fairseq's ``translation`` plus a peer exchange.

Each codistilling model is an ordinary fairseq-train job with this task. Before every
update the task lets its ``PeerExchange`` publish our weights and swap in newer peer
weights (every ``--codistill-interval`` updates), and tells the criterion where
training stands so that alpha follows its schedule. The criterion asks the task for
the peers through ``codistill_peers()``.
"""
import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from fairseq import models, utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II, DictConfig, OmegaConf, open_dict

from fairseq_codistill.checkpoints import (
    allow_fairseq_checkpoints,
    load_checkpoint_state,
    repair_checkpoint_last,
)
from fairseq_codistill import options as opts
from fairseq_codistill.exchange import PeerExchange, check_exchange_dir
from fairseq_codistill.snapshot import SnapshotError
from fairseq_codistill.options import exchange_config

logger = logging.getLogger(__name__)

# An epoch boundary where the LR fell to at most this fraction of the previous epoch's
# counts as one LR decay for --codistill-alpha-schedule step. Step schedules (x0.1,
# --lr-shrink 0.5) cross it; inverse_sqrt (>= 0.707 per epoch) never does.
LR_DECAY_RATIO = 0.5


@dataclass
class CodistillTranslationConfig(TranslationConfig):
    # Defaults and help texts: fairseq_codistill/options.py, shared with the vision trainer.
    codistill_dir: str = opts.DIR.field("; required (unless --codistill-num-models 1)")
    codistill_id: int = opts.ID.field()
    codistill_num_models: int = opts.NUM_MODELS.field(
        "; 1 trains alone, with no exchange and no --codistill-dir, logging the same metrics "
        "(param_dist): the lone control and the all-reduce baseline of a study")
    codistill_topology: ChoiceEnum(opts.TOPOLOGY.choices) = opts.TOPOLOGY.field()
    codistill_interval: int = opts.INTERVAL.field()
    codistill_snapshot_dtype: ChoiceEnum(opts.SNAPSHOT_DTYPE.choices) = opts.SNAPSHOT_DTYPE.field()
    codistill_peer_dtype: ChoiceEnum(opts.PEER_DTYPE.choices) = opts.PEER_DTYPE.field()
    codistill_max_staleness: int = opts.MAX_STALENESS.field()
    codistill_wait_for_peers: float = opts.WAIT_FOR_PEERS.field()
    codistill_max_lead: int = opts.MAX_LEAD.field()
    log_interval: int = II("common.log_interval")
    save_dir: str = II("checkpoint.save_dir")
    restore_file: str = II("checkpoint.restore_file")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def model_meta(model_cfg, dictionary) -> dict:
    """What a peer needs to rebuild this model: its config and its output vocabulary."""
    if isinstance(model_cfg, argparse.Namespace):
        kind, cfg = "namespace", vars(model_cfg)
    elif isinstance(model_cfg, DictConfig):
        kind, cfg = "dictconfig", OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    else:
        kind, cfg = "dict", dict(model_cfg)
    return {
        "model_cfg_kind": kind,
        "model_cfg": _jsonable(cfg),
        "vocab_size": len(dictionary),
        "vocab_fingerprint": dictionary_fingerprint(dictionary),
    }


def dictionary_fingerprint(dictionary) -> str:
    return hashlib.sha1("\n".join(dictionary.symbols).encode()).hexdigest()[:12]


def offset_seed(cfg) -> None:
    """Model i trains with --seed S + i: its own initial weights, batch order and dropout.

    The paper's models each train on their own stream of mini-batches; with one seed for
    all, n jobs would start from the same weights and read the same batches in the same
    order, and each peer would be a stale copy of the model itself (measured here: the two
    models' losses equal to the last digit until their first exchange). fairseq reads
    ``common.seed`` for the initial weights (seeded again here, as fairseq-train seeded it
    before building the task), for the batch order of every epoch and for each update's
    dropout, so changing it here changes all three; the vision trainer does the same.
    """
    root = cfg._get_root() if isinstance(cfg, DictConfig) else None
    if root is None or "common" not in root:
        logger.warning("codistill: no fairseq config to offset --seed in; give each model its "
                       "own --seed (model i: S + i)")
        return
    seed = root.common.seed + cfg.codistill_id
    with open_dict(root.common):
        root.common.seed = seed
    np.random.seed(seed)
    utils.set_torch_seed(seed)
    logger.info("codistill: model %d trains with --seed %d (the given seed + its id)",
                cfg.codistill_id, seed)


@register_task("codistill_translation", dataclass=CodistillTranslationConfig)
class CodistillTranslationTask(TranslationTask):
    cfg: CodistillTranslationConfig

    @classmethod
    def setup_task(cls, cfg: CodistillTranslationConfig, **kwargs):
        if cfg.codistill_num_models == 1:
            if cfg.codistill_dir:
                raise ValueError(f"--codistill-dir {cfg.codistill_dir} with --codistill-num-models 1: "
                                 "a model trained alone exchanges nothing; drop one of the two")
            logger.info("codistill: --codistill-num-models 1, training alone (no peers)")
        else:
            exchange_config(cfg).validate()
            check_exchange_dir(cfg.codistill_dir)
            offset_seed(cfg)
        allow_fairseq_checkpoints()
        if cfg.restore_file == "checkpoint_last.pt" and distributed_utils.get_global_rank() == 0:
            repair_checkpoint_last(cfg.save_dir)  # before the trainer loads it
        return super().setup_task(cfg, **kwargs)

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.exchange: Optional[PeerExchange] = None
        self.model = None
        self.num_updates = 0  # of the update being taken, as fairseq numbers them
        self.init_params = None  # fp32 CPU copy of the initial weights, for param_dist
        self.epoch, self.num_lr_decays, self.epoch_lr = 1, 0, None
        self._lr_epoch = 0  # the epoch whose starting LR is in epoch_lr
        self._restored = False

    # -- the model we train and its exchange -----------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.model is None:  # the first model built is ours; peers come later
            self.model = model
            if self.cfg.codistill_num_models > 1:
                self.exchange = PeerExchange(
                    exchange_config(self.cfg),
                    build_peer=self._build_peer,
                    meta=model_meta(cfg, self.tgt_dict),
                    check_peer=self._check_peer,
                    group=distributed_utils.get_data_parallel_group()
                    if torch.distributed.is_initialized() else None,
                )
            if distributed_utils.get_global_rank() == 0:
                # Built before any checkpoint is loaded and seeded by --seed, so a
                # resumed job gets the same initial weights back.
                self.init_params = {n: p.detach().float().cpu().clone()
                                    for n, p in model.named_parameters()}
        return model

    def _build_peer(self, meta: dict):
        cfg = meta["model_cfg"]
        if meta.get("model_cfg_kind") == "namespace":
            cfg = argparse.Namespace(**cfg)
        else:
            cfg = OmegaConf.create(cfg)
        return models.build_model(cfg, self)

    def _check_peer(self, meta: dict) -> None:
        ours = (len(self.tgt_dict), dictionary_fingerprint(self.tgt_dict))
        theirs = (meta.get("vocab_size"), meta.get("vocab_fingerprint"))
        if theirs != ours:
            raise SnapshotError(
                f"the peer was trained with a target dictionary of {theirs[0]} symbols "
                f"(fingerprint {theirs[1]}) but this model has {ours[0]} ({ours[1]}): "
                "codistilled models must share one dictionary (train them all on the same "
                "data-bin, made with fairseq-preprocess --joined-dictionary)")

    def codistill_peers(self) -> List[torch.nn.Module]:
        return self.exchange.active_peers() if self.exchange is not None else []

    # -- fairseq hooks ----------------------------------------------------------------
    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if not self._restored:
            self._restore_state()
            self._restored = True
        self.epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._count_lr_decays(optimizer.get_lr())
        self.num_updates = update_num
        if self.exchange is not None:
            self.exchange.step(update_num, self.model)
        if hasattr(criterion, "set_progress"):
            criterion.set_progress(epoch=self.epoch, num_updates=update_num,
                                   num_lr_decays=self.num_lr_decays)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def _count_lr_decays(self, lr: float) -> None:
        if self._lr_epoch == self.epoch:
            return
        if self.epoch_lr is not None and lr <= LR_DECAY_RATIO * self.epoch_lr:
            self.num_lr_decays += 1
        self.epoch_lr, self._lr_epoch = lr, self.epoch

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        # Training steps only: validation runs with the model in eval mode.
        if self.model is None or not self.model.training:
            return
        if self.exchange is not None:
            staleness = self.exchange.staleness()
            if staleness is not None:
                metrics.log_scalar("peer_staleness", staleness, weight=0, round=1)
            metrics.log_scalar("codistill_bytes", self.exchange.bytes_read, weight=0, round=0)
        # Logged with weight 0: the meter shows the last value, computed at log intervals.
        updates = self.num_updates + 1  # the update this step completes
        if self.init_params is not None and updates % max(self.cfg.log_interval, 1) == 0:
            metrics.log_scalar("param_dist", self.param_dist(), weight=0, round=3)

    def param_dist(self) -> float:
        """L2 distance of the weights from their initial values (the paper's Fig. 3)."""
        total = 0.0
        for name, p in self.model.named_parameters():
            init = self.init_params.get(name)
            if init is not None:
                total += (p.detach().float().cpu() - init).pow(2).sum().item()
        return total ** 0.5

    # -- state in fairseq checkpoints -------------------------------------------------
    def state_dict(self):
        state = dict(super().state_dict() or {})
        if self.exchange is not None:
            state["codistill"] = {
                **self.exchange.state_dict(),
                "epoch": self.epoch,
                "num_lr_decays": self.num_lr_decays,
                "epoch_lr": self.epoch_lr,
                "lr_epoch": self._lr_epoch,
            }
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict or {})
        own = state_dict.pop("codistill", None)
        super().load_state_dict(state_dict)
        if own is not None and self.exchange is not None:
            self.exchange.load_state_dict(own)
            self.num_lr_decays = int(own.get("num_lr_decays", 0))
            self.epoch_lr = own.get("epoch_lr")
            self._lr_epoch = int(own.get("lr_epoch", 0))
            logger.info("codistill: resumed task state (%d LR decays, %d peer loads so far)",
                        self.num_lr_decays, self.exchange.num_loads)

    def _restore_state(self) -> None:
        """fairseq's trainer does not hand the task its saved state on resume: read it
        from the checkpoint the trainer restored (checkpoint_last.pt by default)."""
        restore = self.cfg.restore_file
        if restore == "checkpoint_last.pt":
            restore = os.path.join(self.cfg.save_dir, restore)
        if not os.path.isfile(restore):
            return
        try:
            state = load_checkpoint_state(restore, keys=["task_state"])["task_state"]
        except Exception as e:  # an unreadable file was already reported by fairseq
            logger.warning("codistill: could not read task state from %s: %s", restore, e)
            return
        self.load_state_dict(state or {})
