"""The ``codistill_ce`` criterion: cross-entropy plus alpha times the codistillation
penalty against the peers' logits on the same batch.

Peers come from the task (``codistill_translation`` provides them through
``task.codistill_peers()``); with any other task there is no peer and the criterion
is plain cross-entropy with extra (zero) metrics.
"""
import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from fairseq_codistill import options as opts
from fairseq_codistill.core.loss import AlphaSchedule, peers_penalty

logger = logging.getLogger(__name__)


@dataclass
class CodistillCrossEntropyConfig(FairseqDataclass):
    # Defaults and help texts: fairseq_codistill/options.py, shared with the vision trainer.
    codistill_alpha: float = opts.ALPHA.field()
    codistill_alpha_schedule: ChoiceEnum(opts.ALPHA_SCHEDULE.choices) = opts.ALPHA_SCHEDULE.field()
    codistill_gamma: float = opts.GAMMA.field()
    codistill_alpha_max: Optional[float] = opts.ALPHA_MAX.field()
    codistill_burn_in_updates: int = opts.BURN_IN_UPDATES.field()
    codistill_loss: ChoiceEnum(opts.LOSS.choices) = opts.LOSS.field()
    codistill_temperature: float = opts.TEMPERATURE.field()
    # Declared only to reject it with a clear message: label smoothing over-regularises
    # on top of codistillation, which is itself a regulariser (the paper's main finding).
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "not supported: codistill_ce trains without label smoothing"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


def validate_config(cfg: CodistillCrossEntropyConfig) -> AlphaSchedule:
    """Reject bad values before training starts, naming the flag to change; returns the
    alpha schedule (which checks its own flags)."""
    schedule = opts.alpha_schedule(cfg)
    opts.check_penalty(cfg)
    if cfg.label_smoothing != 0:
        raise ValueError(
            f"--label-smoothing {cfg.label_smoothing} is not supported by --criterion "
            "codistill_ce: codistillation already regularises, and the paper removes label "
            "smoothing to match all-reduce; drop the flag (or use "
            "label_smoothed_cross_entropy for the baseline)")
    return schedule


@register_criterion("codistill_ce", dataclass=CodistillCrossEntropyConfig)
class CodistillCrossEntropyCriterion(CrossEntropyCriterion):
    # The task refuses, before training, a codistilling run whose criterion lacks this:
    # without the penalty the models would share nothing.
    uses_codistill_peers = True

    def __init__(self, task, cfg: CodistillCrossEntropyConfig):
        super().__init__(task, cfg.sentence_avg)
        self.schedule = validate_config(cfg)
        self.penalty_kind = cfg.codistill_loss
        self.temperature = cfg.codistill_temperature
        # Training progress, advanced by the task once per update (not per micro-batch).
        self.epoch, self.num_updates, self.num_lr_decays = 1, 0, 0
        if not hasattr(task, "codistill_peers"):
            logger.warning("codistill_ce: task %s provides no peers, so the penalty is 0 and "
                           "alpha stays at its first value; use --task codistill_translation "
                           "to codistill", type(task).__name__)

    @classmethod
    def build_criterion(cls, cfg: CodistillCrossEntropyConfig, task):
        return cls(task, cfg)

    def set_progress(self, epoch=None, num_updates=None, num_lr_decays=None) -> None:
        if epoch is not None:
            self.epoch = epoch
        if num_updates is not None:
            self.num_updates = num_updates
        if num_lr_decays is not None:
            self.num_lr_decays = num_lr_decays

    @property
    def alpha(self) -> float:
        return self.schedule(self.epoch, self.num_updates, self.num_lr_decays)

    def peers(self) -> List[torch.nn.Module]:
        get_peers = getattr(self.task, "codistill_peers", None)
        return list(get_peers()) if get_peers is not None else []

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        nll, _ = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        loss = nll
        logging_output = {
            "nll_loss": nll.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if model.training:
            # Validation stays pure NLL, comparable with a baseline run.
            alpha, peers = self.alpha, self.peers()
            penalty = torch.zeros(()) if reduce else torch.zeros_like(nll)
            if alpha > 0 and peers:
                penalty = self.compute_penalty(model, net_output, peers, sample, reduce)
                loss = nll + alpha * penalty
            logging_output.update({
                "codistill_loss": penalty.data.sum(),
                "alpha": alpha,
                "num_peers": len(peers),
                "codistill_count": 1,  # micro-batches summed; averages alpha/num_peers
            })
        logging_output["loss"] = loss.data
        return loss, sample_size, logging_output

    def compute_penalty(self, model, net_output, peers, sample, reduce=True):
        target = model.get_targets(sample, net_output)  # (B, T)
        penalty = peers_penalty(
            net_output[0],
            peers,
            lambda peer: peer(**sample["net_input"])[0],  # (B, T, V)
            mask=target.ne(self.padding_idx),
            kind=self.penalty_kind,
            reduction="sum" if reduce else "none",
            temperature=self.temperature,
        )
        return penalty if reduce else penalty.view(-1)

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens, sample_size = total("ntokens"), total("sample_size")
        # base 2, as fairseq's own criteria
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        count = total("codistill_count")
        if count:
            metrics.log_scalar("codistill_loss", total("codistill_loss") / ntokens, ntokens, round=4)
            metrics.log_scalar("alpha", total("alpha") / count, count, round=4)
            metrics.log_scalar("num_peers", total("num_peers") / count, count, round=2)
