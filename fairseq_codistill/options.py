"""The ``--codistill-*`` options, defined once for both front ends.

fairseq's dataclasses (the ``codistill_ce`` criterion, the ``codistill_translation``
task) and the vision trainer's argparse parser take the same options. Each one's
default, help text and choices live in an ``Option`` below; its checks live in the
core object it configures (``AlphaSchedule``, ``ExchangeConfig``) or, for the penalty,
in ``check_penalty`` here. Both front ends store the values under the same names
(``cfg.codistill_alpha``, ``args.codistill_alpha``), so the builders at the end take
either. No fairseq import: the vision trainer runs without fairseq.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from fairseq_codistill.exchange.peers import METHODS, TOPOLOGIES, ExchangeConfig
from fairseq_codistill.exchange.snapshot import SNAPSHOT_DTYPES
from fairseq_codistill.core.loss import PENALTY_KINDS, SCHEDULES, AlphaSchedule
from fairseq_codistill.core.precision import PEER_DTYPES


@dataclass(frozen=True)
class Option:
    """One ``--codistill-*`` option: its value is stored as ``name``."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def field(self, extra_help: str = ""):
        """The field of a fairseq dataclass (annotate it with ``self.type``, or with
        ``ChoiceEnum(self.choices)``; a ``bool`` field defaulting to False is fairseq's
        ``store_true`` flag)."""
        return dataclasses.field(default=self.default, metadata={"help": self.help + extra_help})

    def add_to(self, parser, extra_help: str = "") -> None:
        """The same option in an argparse parser or group (a ``bool``: a switch, as in fairseq)."""
        if self.type is bool:
            parser.add_argument(self.flag, action="store_true", default=self.default,
                                help=self.help + extra_help)
            return
        parser.add_argument(self.flag, type=self.type, default=self.default,
                            choices=self.choices, help=self.help + extra_help)


# -- the exchange (ExchangeConfig checks these) ------------------------------------------
DIR = Option("codistill_dir", str, "", "where all codistilled models exchange snapshots: a "
             "directory (a shared filesystem in a cluster) or any fsspec URL, such as "
             "s3://bucket/prefix for models on different clusters (pip install "
             "'fairseq-codistill[s3]'; credentials and endpoint from the store's usual "
             "environment, e.g. AWS_ENDPOINT_URL)")
ID = Option("codistill_id", int, -1, "this model's id, 0 .. num-models-1; required with "
            "--codistill-dir")
NUM_MODELS = Option("codistill_num_models", int, 2, "number of models codistilling together (>= 2)")
TOPOLOGY = Option("codistill_topology", str, "all", "all: distil from every other model (the "
                  "paper); ring: only from model (id+1) mod n, reading one snapshot per interval "
                  "whatever n", choices=TOPOLOGIES)
INTERVAL = Option("codistill_interval", int, 2500, "updates between publishing our snapshot and "
                  "re-reading the peers'; 2500 is the paper's ImageNet value, robust to 2-4x "
                  "either way; in the study (docs/study.md), half an epoch to four epochs all "
                  "ended below the lone model")
SNAPSHOT_DTYPE = Option(
    "codistill_snapshot_dtype", str, "fp16",
    "dtype of published weights, cast to the peer's dtype on load. fp16: half the bytes of "
    "fp32, logits within 1e-6 of an fp32 peer's. int8: weight matrices quantised per output "
    "channel, every other tensor fp16, a quarter of fp32's bytes; it moves the peer's logits "
    "by 0.006 (relative L2) and the penalty by 2e-5, and left validation NLL unchanged within "
    "the spread of seeds (measured in docs/study.md). Worth it where the exchange crosses "
    "a slow or paid link (an object store between clusters); on a shared filesystem fp16 "
    "costs less time: int8 quantises on the writer thread",
    choices=tuple(SNAPSHOT_DTYPES))
PEER_DTYPE = Option(
    "codistill_peer_dtype", str, "auto",
    "dtype the peers run their forward in; their logits are compared in fp32. same: the "
    "model's; auto: bf16 where it is fast (a CPU with AMX-BF16 or AVX512-BF16, a GPU that "
    "supports bf16), else same. On a CPU with AMX a bf16 peer's forward costs a fraction of "
    "an fp32 one, and its penalty and gradient stay close to an fp32 peer's (benchmarks/peer_precision.py; "
    "the runs in docs/benchmarks.md)",
    choices=PEER_DTYPES)
MAX_STALENESS = Option("codistill_max_staleness", int, 0, "drop a peer whose snapshot is more "
                       "than this many of its updates behind ours, until a fresher one appears; "
                       "0 = no limit")
WAIT_FOR_PEERS = Option("codistill_wait_for_peers", float, 0.0, "seconds to wait, at the first "
                        "exchange, for peers that have not published yet (otherwise train at "
                        "alpha 0 until they do); with --codistill-max-lead, the most to wait at "
                        "each exchange; with --codistill-method localsgd or diloco (required "
                        "there, unless --codistill-async), the most to wait at each averaging "
                        "step before averaging the models present, and at start-up for the "
                        "other models, to refuse before training one that averages another "
                        "architecture or interval; with --codistill-async, only that start-up "
                        "wait (default there: 10 s)")
MAX_LEAD = Option("codistill_max_lead", int, 0, "at each exchange, wait until every peer has a "
                  "snapshot at most this many updates behind ours (stale-synchronous: bounds "
                  "peer_staleness by lead + interval); a peer that misses "
                  "--codistill-wait-for-peers is not waited for again until it publishes; "
                  "0 = never wait")
METHOD = Option(
    "codistill_method", str, "distill",
    "what the models share every --codistill-interval updates, one model's weights each "
    "way: distill, the peers' logits as a penalty (codistillation; needs --criterion "
    "codistill_ce, and its models may differ in architecture); localsgd, the mean of the "
    "models' weights (Lin et al. 2020); diloco, an outer Nesterov step on the mean of the "
    "models' changes (Douillard et al. 2023). localsgd and diloco wait for every model at "
    "each averaging step (--codistill-wait-for-peers; with --codistill-async, never), start "
    "all models from the same initial weights, and take any criterion; their models must "
    "share one architecture and one --codistill-interval (checked before training)",
    choices=METHODS)
OUTER_LR = Option("codistill_outer_lr", float, 0.7, "diloco: learning rate of the outer SGD "
                  "step on the shared weights; 0.7 is DiLoCo's (1 with no momentum is localsgd)")
OUTER_MOMENTUM = Option(
    "codistill_outer_momentum", float, 0.5,
    "diloco: Nesterov momentum of the outer SGD step. 0.5: in the study's short runs from "
    "scratch (few outer steps) momentum 0.9 failed where 0.5 worked (measured in "
    "docs/study.md); DiLoCo's paper uses 0.9 over hundreds of outer steps of 500 inner "
    "steps, and the fairseq task warns when 0.9 or more meets fewer than 100 outer steps")
ASYNC = Option(
    "codistill_async", bool, False,
    "localsgd, diloco: average without waiting (Async Local-SGD, Liu et al. 2024): at each "
    "of its own --codistill-interval updates a model publishes, then averages with the "
    "newest snapshot each peer has published, each peer version once (none fresh: it keeps "
    "its weights); the staleness averaged is logged (average_staleness). A slow or absent "
    "model never stops the others")

# -- alpha and the penalty (AlphaSchedule and check_penalty check these) ----------------
ALPHA = Option("codistill_alpha", float, 0.1, "weight of the codistillation penalty (initial "
               "value for the exponential and step schedules); 0 trains plain cross-entropy. "
               "0.1: in the study (docs/study.md, 3 seeds) it beat the model trained alone; 1.0 "
               "held both models back (measured in docs/study.md)")
ALPHA_SCHEDULE = Option("codistill_alpha_schedule", str, "exponential", "constant; exponential: "
                        "alpha * gamma^(epoch-1), the paper's NMT choice and the study's "
                        "(docs/study.md; against a constant alpha: its claim 4); step: alpha * gamma^(LR decays "
                        "so far), for step LR schedules (the paper finds step and constant alike "
                        "on ImageNet)", choices=SCHEDULES)
GAMMA = Option("codistill_gamma", float, 1.1, "growth factor of the exponential and step "
               "schedules; 1.1 is the paper's NMT value (1.5 made alpha explode) and the "
               "study's (docs/study.md)")
ALPHA_MAX = Option("codistill_alpha_max", float, None, "upper bound on alpha (default: none)")
BURN_IN_UPDATES = Option("codistill_burn_in_updates", int, 0, "alpha is 0 for this many "
                         "updates; the paper found no benefit at an exchange interval of "
                         "thousands of updates, and 3 epochs changed nothing in the study "
                         "(docs/study.md)")
LOSS = Option("codistill_loss", str, "mse", "mse: mean squared error of the logits (the "
              "paper's choice); kl: KL(peer || own) of the softmaxes, as in Anil et al. / "
              "Zhang et al.", choices=PENALTY_KINDS)
TEMPERATURE = Option("codistill_temperature", float, 1.0,
                     "softmax temperature of --codistill-loss kl")

EXCHANGE_OPTIONS = (DIR, ID, NUM_MODELS, TOPOLOGY, INTERVAL, SNAPSHOT_DTYPE, PEER_DTYPE,
                    MAX_STALENESS, WAIT_FOR_PEERS, MAX_LEAD, METHOD, OUTER_LR, OUTER_MOMENTUM, ASYNC)
PENALTY_OPTIONS = (ALPHA, ALPHA_SCHEDULE, GAMMA, ALPHA_MAX, BURN_IN_UPDATES, LOSS, TEMPERATURE)
ALL_OPTIONS = EXCHANGE_OPTIONS + PENALTY_OPTIONS


def defaults(**overrides) -> argparse.Namespace:
    """Every option at its default, as a namespace the builders below accept."""
    values = {opt.name: opt.default for opt in ALL_OPTIONS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"not --codistill-* options: {sorted(unknown)}")
    return argparse.Namespace(**{**values, **overrides})


def with_defaults(cfg) -> argparse.Namespace:
    """Every option: those ``cfg`` has (a front end's, which may hold only some), the
    defaults for the rest."""
    return argparse.Namespace(**{opt.name: getattr(cfg, opt.name, opt.default) for opt in ALL_OPTIONS})


# -- what the options configure ------------------------------------------------------------


def alpha_schedule(cfg) -> AlphaSchedule:
    """The loss core's schedule; its errors name the --codistill-* flags."""
    return AlphaSchedule(alpha0=cfg.codistill_alpha, kind=str(cfg.codistill_alpha_schedule),
                         gamma=cfg.codistill_gamma, alpha_max=cfg.codistill_alpha_max,
                         burn_in_updates=cfg.codistill_burn_in_updates)


def check_penalty(cfg) -> None:
    """Reject a temperature that is not positive, or that the penalty would ignore."""
    if not cfg.codistill_temperature > 0:
        raise ValueError(f"--codistill-temperature must be > 0 (got {cfg.codistill_temperature})")
    if str(cfg.codistill_loss) != "kl" and cfg.codistill_temperature != 1.0:
        raise ValueError(f"--codistill-temperature {cfg.codistill_temperature} only applies to "
                         "--codistill-loss kl (the mse penalty compares raw logits)")


def exchange_config(cfg) -> ExchangeConfig:
    """The exchange's config; ``ExchangeConfig.validate`` checks it, naming the flags."""
    if cfg.codistill_id < 0:
        raise ValueError(f"--codistill-id is required: this model's id in [0, "
                         f"--codistill-num-models) (got {cfg.codistill_id})")
    return ExchangeConfig(
        root=cfg.codistill_dir,
        model_id=cfg.codistill_id,
        num_models=cfg.codistill_num_models,
        topology=str(cfg.codistill_topology),
        interval=cfg.codistill_interval,
        dtype=str(cfg.codistill_snapshot_dtype),
        peer_dtype=str(cfg.codistill_peer_dtype),
        max_staleness=cfg.codistill_max_staleness,
        wait_for_peers=cfg.codistill_wait_for_peers,
        max_lead=cfg.codistill_max_lead,
        method=str(cfg.codistill_method),
        outer_lr=cfg.codistill_outer_lr,
        outer_momentum=cfg.codistill_outer_momentum,
        asynchronous=bool(cfg.codistill_async),
    )


def add_all(parser, extra_help: Optional[dict] = None) -> None:
    """Add every option to an argparse parser or group; ``extra_help`` maps an option to
    text appended to its help (what it means in that front end)."""
    extra_help = extra_help or {}
    for opt in ALL_OPTIONS:
        opt.add_to(parser, extra_help.get(opt, ""))
