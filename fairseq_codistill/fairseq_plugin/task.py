"""The ``codistill_translation`` task: fairseq's ``translation`` plus a peer exchange.

Each codistilling model is an ordinary fairseq-train job with this task. Before every
update the task steps its ``Codistillation`` (``fairseq_codistill.codistillation``, the
object any training loop uses): every ``--codistill-interval`` updates, with
``--codistill-method distill``, it publishes our weights and swaps in newer peer weights,
and the task tells the criterion where training stands so that alpha follows its
schedule; the criterion asks the task for the peers through ``codistill_peers()``. With
``localsgd`` or ``diloco`` it averages the weights the optimizer steps (fp32 master
copies under ``--fp16``/``--bf16``).
"""
import argparse
import atexit
import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq import models, utils
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II, DictConfig, OmegaConf, open_dict

from fairseq_codistill.fairseq_plugin.checkpoints import (
    allow_fairseq_checkpoints,
    load_checkpoint_state,
    repair_checkpoint_last,
)
from fairseq_codistill import options as opts
from fairseq_codistill.codistillation import Codistillation, model_weights
from fairseq_codistill.exchange.peers import AVERAGING_METHODS, check_exchange_dir
from fairseq_codistill.exchange.snapshot import SnapshotError
from fairseq_codistill.options import exchange_config

logger = logging.getLogger(__name__)

# An epoch boundary where the LR fell to at most this fraction of the previous epoch's
# counts as one LR decay for --codistill-alpha-schedule step. Step schedules (x0.1,
# --lr-shrink 0.5) cross it; inverse_sqrt (>= 0.707 per epoch) never does.
LR_DECAY_RATIO = 0.5
# DiLoCo's outer momentum 0.9 over fewer outer steps than this gets a warning: in the
# study's short runs from scratch it failed where 0.5 worked (docs/study.md).
FEW_OUTER_STEPS = 100


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
    codistill_method: ChoiceEnum(opts.METHOD.choices) = opts.METHOD.field()
    codistill_outer_lr: float = opts.OUTER_LR.field()
    codistill_outer_momentum: float = opts.OUTER_MOMENTUM.field()
    codistill_async: bool = opts.ASYNC.field()
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


def trained_weights(model, optimizer) -> Dict[str, torch.Tensor]:
    """What the models average (``model_weights``), with the tensors the optimizer steps in
    place of the parameters: under --fp16/--bf16 fairseq's FP16Optimizer steps fp32 master
    copies of the half-precision parameters (``fp32_params``, flat per device or one per
    parameter, in the order of ``fp16_params``); elsewhere the parameters are their own
    masters."""
    out = model_weights(model)
    masters = _fp32_masters(optimizer)
    for name, p in model.named_parameters():  # a tied weight once
        out[name] = masters.get(id(p), p.data)
    return out


def _fp32_masters(optimizer) -> Dict[int, torch.Tensor]:
    """id(half-precision parameter) -> its fp32 master copy; {} without mixed precision."""
    fp32 = getattr(optimizer, "fp32_params", None)
    if fp32 is None:
        return {}
    halves = optimizer.fp16_params
    if not optimizer.has_flat_params:
        return {id(p): p32.data for p, p32 in zip(halves, fp32)}
    out = {}
    for device, flat in fp32.items():  # as FP16Optimizer._sync_fp32_params_to_fp16 walks it
        offset = 0
        for p in (p for p in halves if p.device.index == device):
            out[id(p)] = flat.data[offset:offset + p.numel()].view_as(p.data)
            offset += p.numel()
    return out


def sync_half_precision_copy(optimizer) -> None:
    """After the fp32 masters changed: copy them into the half-precision model, as the
    FP16Optimizer does after each step."""
    if getattr(optimizer, "fp32_params", None) is not None:
        optimizer._sync_fp32_params_to_fp16()


def _root(cfg) -> Optional[DictConfig]:
    """fairseq's whole config, of which the task's ``cfg`` is a part (None outside fairseq)."""
    return cfg._get_root() if isinstance(cfg, DictConfig) else None


def check_whole_weights(cfg) -> None:
    """Rank 0 publishes its weights as the model's: with a sharded model they would be one
    shard. Refused before training (gathering the shards for every snapshot is not built)."""
    root = _root(cfg)
    backend = root.distributed_training.ddp_backend if root is not None and \
        "distributed_training" in root else None
    if str(backend) == "fully_sharded":
        raise ValueError(
            "--ddp-backend fully_sharded shards each model's weights over its ranks, and rank 0 "
            "would publish its shard as if it were the whole model: codistilled models train "
            "with --ddp-backend c10d (GPUs) or legacy_ddp (CPUs)")


def warn_few_outer_steps(cfg, max_update: int) -> None:
    """A warning, naming the flag, for DiLoCo's outer momentum (0.9 or more) over fewer
    than FEW_OUTER_STEPS outer steps (--max-update / --codistill-interval): the setting
    the study saw fail. Nothing without --max-update (the run's length is unknown)."""
    if str(cfg.codistill_method) != "diloco" or cfg.codistill_outer_momentum < 0.9 or not max_update:
        return
    outer_steps = max_update // cfg.codistill_interval
    if outer_steps < FEW_OUTER_STEPS:
        logger.warning(
            "codistill: --codistill-outer-momentum %g over %d outer steps (--max-update %d / "
            "--codistill-interval %d): in short runs from scratch outer momentum 0.9 failed "
            "where 0.5 (the default) worked (docs/study.md); DiLoCo's 0.9 is for hundreds of "
            "outer steps", cfg.codistill_outer_momentum, outer_steps, max_update,
            cfg.codistill_interval)


def _max_update(cfg) -> int:
    root = _root(cfg)
    return int(root.optimization.max_update or 0) if root is not None and "optimization" in root else 0


def offset_seed(cfg) -> None:
    """Model i trains with --seed S + i: its own batch order and dropout and, when the
    models codistill, its own initial weights.

    The paper's models each train on their own stream of mini-batches; with one seed for
    all, n jobs would start from the same weights and read the same batches in the same
    order, and each peer would be a stale copy of the model itself (measured here: the two
    models' losses equal to the last digit until their first exchange). fairseq reads
    ``common.seed`` for the batch order of every epoch and for each update's dropout, and
    seeded torch with it (for the initial weights) before building the task; the vision
    trainer does the same. Models that average their weights (localsgd, diloco) start
    from the same weights, as in those methods: their initial weights keep seed S.
    """
    root = _root(cfg)
    if root is None or "common" not in root:
        logger.warning("codistill: no fairseq config to offset --seed in; give each model its "
                       "own --seed (model i: S + i)")
        return
    base, seed = root.common.seed, root.common.seed + cfg.codistill_id
    with open_dict(root.common):
        root.common.seed = seed
    if str(cfg.codistill_method) in AVERAGING_METHODS:
        logger.info("codistill: model %d trains with --seed %d (the given seed + its id) from "
                    "the initial weights of --seed %d, as every model: they average their "
                    "weights", cfg.codistill_id, seed, base)
        return
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
            check_whole_weights(cfg)
            check_exchange_dir(cfg.codistill_dir)
            warn_few_outer_steps(cfg, _max_update(cfg))
            offset_seed(cfg)
        allow_fairseq_checkpoints()
        if cfg.restore_file == "checkpoint_last.pt" and distributed_utils.get_global_rank() == 0:
            repair_checkpoint_last(cfg.save_dir)  # before the trainer loads it
        return super().setup_task(cfg, **kwargs)

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.codistillation: Optional[Codistillation] = None
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
                # the penalty's settings are the criterion's, given in build_criterion
                self.codistillation = Codistillation(
                    model, opts.with_defaults(self.cfg),
                    build_peer=self._build_peer, meta=model_meta(cfg, self.tgt_dict),
                    check_peer=self._check_peer,
                    group=distributed_utils.get_data_parallel_group()
                    if torch.distributed.is_initialized() else None)
            if self.codistillation is not None and self.codistillation.exchange.world > 1:
                self._watch_ranks()
            if distributed_utils.get_global_rank() == 0:
                # Built before any checkpoint is loaded and seeded by --seed, so a
                # resumed job gets the same initial weights back.
                self.init_params = {n: p.detach().float().cpu().clone()
                                    for n, p in model.named_parameters()}
        return model

    def _watch_ranks(self) -> None:
        """A model on several ranks: fairseq logs only warnings on ranks > 0, but every
        rank's swaps stay in its log (they must agree), and each rank says at exit what
        weights it ends with (a digest that must be the same on every rank)."""
        logging.getLogger("fairseq_codistill.exchange.peers").setLevel(logging.INFO)
        logging.getLogger(__name__).setLevel(logging.INFO)
        atexit.register(self._log_final_weights)

    def _log_final_weights(self) -> None:
        crc = 0
        for _, p in sorted(self.model.state_dict().items()):
            crc = zlib.crc32(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy(), crc)
        logger.info("codistill: rank %d of model %d ends at update %d with weights crc32 %08x",
                    self.codistillation.exchange.rank, self.cfg.codistill_id, self.num_updates + 1, crc)

    @property
    def averages(self) -> bool:
        """Whether the models share their weights (localsgd, diloco), not their logits."""
        return str(self.cfg.codistill_method) in AVERAGING_METHODS

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.codistillation is not None and hasattr(criterion, "schedule"):
            self.codistillation.set_penalty(criterion.schedule, criterion.penalty_kind,
                                            criterion.temperature)
        if self.cfg.codistill_num_models > 1 and not self.averages and \
                not getattr(criterion, "uses_codistill_peers", False):
            raise ValueError(
                f"--criterion {getattr(cfg, '_name', type(criterion).__name__)} ignores the "
                f"peers: with --codistill-method {self.cfg.codistill_method} the "
                f"{self.cfg.codistill_num_models} models share only their logits, through the "
                "criterion's penalty, so each would train alone while exchanging snapshots. "
                "Use --criterion codistill_ce, or --codistill-method localsgd or diloco to "
                "share weights with any criterion")
        return criterion

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
        return self.codistillation.peers() if self.codistillation is not None else []

    # -- fairseq hooks ----------------------------------------------------------------
    def get_batch_iterator(self, dataset, **kwargs):
        """fairseq's batches, the same for a resumed run as for the run it continues.

        fairseq builds an iterator's batches once, ordering the examples under
        ``numpy_seed(seed + epoch)`` for the epoch it starts at: 1 in a fresh run, the
        checkpoint's in a resumed one, whose every later epoch would then read other
        batches than the run it resumes (measured: the same batch sizes, other sentences
        from the first resumed update on). The examples are ordered as a fresh run orders
        them, whatever the epoch; a fresh run is unchanged.
        """
        seed, order = kwargs.get("seed", 1), dataset.ordered_indices

        def fresh_run_order():
            with data_utils.numpy_seed(seed + 1):
                return order()

        dataset.ordered_indices = fresh_run_order  # this call only
        try:
            return super().get_batch_iterator(dataset, **kwargs)
        finally:
            del dataset.ordered_indices

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if not self._restored:
            self._restore_state()
            self._restored = True
        self.epoch = epoch

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._count_lr_decays(optimizer.get_lr())
        self.num_updates = update_num
        self._step_exchange(update_num, optimizer)
        if hasattr(criterion, "set_progress"):
            criterion.set_progress(epoch=self.epoch, num_updates=update_num,
                                   num_lr_decays=self.num_lr_decays)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        if self.codistillation is not None and self.codistillation.averages:
            # The weights of update K*j are averaged as soon as it is taken, not before the
            # next one: a run of a multiple of K updates ends on (and validates, and saves)
            # the shared weights, LocalSGD's and DiLoCo's result. The train_step call of the
            # next update is then a repeat and does nothing.
            self._step_exchange(update_num + 1, optimizer)

    def _step_exchange(self, num_updates: int, optimizer) -> None:
        if self.codistillation is not None:
            self.codistillation.step(num_updates, epoch=self.epoch, num_lr_decays=self.num_lr_decays,
                                     weights=lambda: trained_weights(self.model, optimizer),
                                     changed=lambda: sync_half_precision_copy(optimizer))

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
        # Logged with weight 0: the meter shows the last value.
        if self.codistillation is not None:  # alpha and num_peers: the criterion's
            for name, value in self.codistillation.exchange.metrics().items():
                metrics.log_scalar(name, value, weight=0, round=2)
        # param_dist is computed at log intervals only.
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
        if self.codistillation is not None:
            state["codistill"] = {
                **self.codistillation.state_dict(),
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
        if own is not None and self.codistillation is not None:
            self.codistillation.load_state_dict(own)
            self.num_lr_decays = int(own.get("num_lr_decays", 0))
            self.epoch_lr = own.get("epoch_lr")
            self._lr_epoch = int(own.get("lr_epoch", 0))
            logger.info("codistill: resumed task state (%d LR decays, %d peer loads so far)",
                        self.num_lr_decays, self.codistillation.exchange.num_loads)

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
