"""The codistill_ce criterion in-process, on a tiny transformer built as fairseq-train builds it."""
import copy
import math

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from conftest import PLUGIN, TINY_ARCH
from fairseq_codistill.core.loss import codistill_penalty


def build(data_bin, *extra, criterion="codistill_ce"):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), *TINY_ARCH, "--user-dir", PLUGIN, "--cpu", "--criterion", criterion,
        "--max-tokens", "200", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    return task, model, task.build_criterion(cfg.criterion), cfg


def first_batch(task, cfg):
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=200).next_epoch_itr(shuffle=False)
    return next(iter(itr))


class Peers:
    """Stands in for the task's peer provider."""

    def __init__(self, models):
        self.models = models

    def __call__(self):
        return self.models


@pytest.fixture(scope="module")
def setup(data_bin):
    task, model, criterion, cfg = build(data_bin, "--codistill-alpha", "0.5")
    return task, model, criterion, cfg, first_batch(task, cfg)


def peer_of(model, seed):
    peer = copy.deepcopy(model)
    torch.manual_seed(seed)
    for p in peer.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return peer.eval()


def test_alpha_zero_is_plain_cross_entropy_and_skips_the_peer(data_bin, setup):
    task, model, _, cfg, sample = setup
    _, _, zero, _ = build(data_bin, "--codistill-alpha", "0")
    _, _, ce, _ = build(data_bin, criterion="cross_entropy")

    class Exploding(torch.nn.Module):
        def forward(self, *a, **k):
            raise AssertionError("the peer must not run at alpha 0")

    task.codistill_peers = Peers([Exploding()])
    try:
        model.train()
        torch.manual_seed(1)
        loss, size, log = zero(model, sample)
        torch.manual_seed(1)  # same dropout mask
        ref, ref_size, _ = ce(model, sample)
    finally:
        del task.codistill_peers
    assert loss.item() == ref.item() and size == ref_size
    assert log["codistill_loss"].item() == 0.0 and log["alpha"] == 0.0


def test_loss_is_nll_plus_alpha_times_penalty(setup):
    task, model, criterion, _, sample = setup
    peer = peer_of(model, seed=3)
    task.codistill_peers = Peers([peer])
    try:
        model.eval()  # no dropout, so the reference below sees the same logits,
        model.training = True  # but the criterion takes its training branch
        loss, sample_size, log = criterion(model, sample)
    finally:
        del task.codistill_peers
        model.training = False
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
        peer_logits = peer(**sample["net_input"])[0]
        lprobs = torch.log_softmax(logits.float(), -1).view(-1, logits.size(-1))
        target = sample["target"]
        nll = torch.nn.functional.nll_loss(lprobs, target.view(-1), ignore_index=task.tgt_dict.pad(),
                                           reduction="sum")
        penalty = codistill_penalty(logits, peer_logits, mask=target.ne(task.tgt_dict.pad()))
    assert penalty.item() > 0
    assert loss.item() == pytest.approx(nll.item() + 0.5 * penalty.item(), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert log["codistill_loss"].item() == pytest.approx(penalty.item(), rel=1e-5)
    assert log["num_peers"] == 1 and log["alpha"] == 0.5
    assert sample_size == sample["ntokens"]


def test_identical_peer_adds_nothing_and_gradients_flow(setup):
    task, model, criterion, _, sample = setup
    model.eval()
    model.training = True
    task.codistill_peers = Peers([copy.deepcopy(model).eval()])
    try:
        model.zero_grad()
        loss, _, log = criterion(model, sample)
        loss.backward()
    finally:
        del task.codistill_peers
        model.training = False
    assert log["codistill_loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(log["nll_loss"].item(), rel=1e-6)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_peers_are_not_submodules_and_validation_is_pure_nll(setup):
    task, model, criterion, _, sample = setup
    peer = peer_of(model, seed=4)
    task.codistill_peers = Peers([peer])
    try:
        model.eval()
        loss, _, log = criterion(model, sample)  # eval: validation
    finally:
        del task.codistill_peers
    assert loss.item() == pytest.approx(log["nll_loss"].item())
    assert "codistill_loss" not in log
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    assert not any(m is peer for m in criterion.modules())


def test_reduce_metrics_logs_per_token_values_in_base_2(setup):
    from fairseq.logging import metrics

    _, _, criterion, _, _ = setup
    logs = [  # two micro-batches
        {"loss": torch.tensor(12.0), "nll_loss": torch.tensor(10.0), "codistill_loss": torch.tensor(4.0),
         "ntokens": 10, "sample_size": 10, "nsentences": 2, "alpha": 0.5, "num_peers": 1, "codistill_count": 1},
        {"loss": torch.tensor(6.0), "nll_loss": torch.tensor(5.0), "codistill_loss": torch.tensor(2.0),
         "ntokens": 5, "sample_size": 5, "nsentences": 1, "alpha": 0.5, "num_peers": 1, "codistill_count": 1},
    ]
    with metrics.aggregate() as agg:
        criterion.__class__.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(18 / 15 / math.log(2), abs=1e-3)  # 18 nats / 15 tokens
    assert values["nll_loss"] == pytest.approx(15 / 15 / math.log(2), abs=1e-3)
    assert values["codistill_loss"] == pytest.approx(6 / 15, abs=1e-4)
    assert values["alpha"] == 0.5 and values["num_peers"] == 1
    assert values["ppl"] == pytest.approx(2 ** round(1 / math.log(2), 3), rel=1e-3)


@pytest.mark.parametrize("flags, named", [
    (["--codistill-alpha", "-1"], "--codistill-alpha"),
    (["--codistill-alpha", "inf"], "--codistill-alpha"),
    (["--codistill-gamma", "0"], "--codistill-gamma"),
    (["--codistill-gamma", "-1"], "--codistill-gamma"),
    (["--codistill-alpha-max", "-1"], "--codistill-alpha-max"),
    (["--codistill-burn-in-updates", "-5"], "--codistill-burn-in-updates"),
    (["--codistill-loss", "kl", "--codistill-temperature", "0"], "--codistill-temperature"),
    (["--codistill-temperature", "2"], "--codistill-temperature"),  # a KL option with mse
    (["--label-smoothing", "0.1"], "--label-smoothing"),
])
def test_bad_flags_fail_at_build_time_naming_the_flag(data_bin, flags, named):
    with pytest.raises(ValueError, match=named):
        build(data_bin, *flags)


def test_registered_whatever_the_import_order():
    # The package imported before fairseq (a notebook, or a tool that imports the exchange
    # first) must not leave codistill_ce unknown to a later in-process fairseq-train.
    import subprocess
    import sys

    code = ("import sys, fairseq_codistill.exchange.peers\n"
            "assert 'fairseq' not in sys.modules\n"
            "from fairseq import options\n"
            "args = options.parse_args_and_arch(options.get_training_parser(), "
            "['data', '--arch', 'transformer', '--criterion', 'codistill_ce', '--task', 'codistill_translation'])\n"
            "print(args.criterion, args.task, args.codistill_alpha)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["codistill_ce", "codistill_translation", "0.1"]
