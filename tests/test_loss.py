"""The loss core against values worked out by hand (arithmetic in the comments)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_codistill.core.loss import AlphaSchedule, codistill_penalty

# Two positions, V = 3.
OWN = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
PEER = [[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
# position 0: diff (0, 2, 0) -> squares (0, 4, 0) -> mean 4/3
# position 1: diff (-1, -1, -1) -> squares (1, 1, 1) -> mean 1
PER_POSITION = [4 / 3, 1.0]


def test_mse_per_position_sum_and_mean():
    own, peer = torch.tensor(OWN), torch.tensor(PEER)
    assert codistill_penalty(own, peer, reduction="none").tolist() == pytest.approx(PER_POSITION)
    assert codistill_penalty(own, peer).item() == pytest.approx(7 / 3)  # 4/3 + 1
    assert codistill_penalty(own, peer, reduction="mean").item() == pytest.approx(7 / 6)


def test_mse_gradient():
    own = torch.tensor(OWN, requires_grad=True)
    codistill_penalty(own, torch.tensor(PEER)).backward()
    # d/dl mean_v (l - p)^2 = 2 (l - p) / V, V = 3
    # position 0: 2/3 * (0, 2, 0) = (0, 4/3, 0); position 1: 2/3 * (-1, -1, -1)
    assert own.grad.tolist()[0] == pytest.approx([0.0, 4 / 3, 0.0])
    assert own.grad.tolist()[1] == pytest.approx([-2 / 3, -2 / 3, -2 / 3])


def test_padding_contributes_nothing_to_value_or_gradient():
    own = torch.tensor(OWN, requires_grad=True)
    mask = torch.tensor([True, False])
    penalty = codistill_penalty(own, torch.tensor(PEER), mask=mask)
    assert penalty.item() == pytest.approx(4 / 3)  # position 1 is padding
    penalty.backward()
    assert own.grad[1].tolist() == [0.0, 0.0, 0.0]
    # the mean is over counted positions only: 4/3 over 1 position
    assert codistill_penalty(own, torch.tensor(PEER), mask=mask, reduction="mean").item() == pytest.approx(4 / 3)


def test_identical_peer_gives_zero_penalty_and_gradient():
    own = torch.randn(2, 5, 7, requires_grad=True)
    penalty = codistill_penalty(own, own.detach().clone())
    assert penalty.item() == 0.0
    penalty.backward()
    assert own.grad.abs().max().item() == 0.0


def test_several_peers_average():
    own = torch.tensor(OWN)
    # a second peer equal to ``own`` adds 0: the mean over 2 peers halves each position
    both = codistill_penalty(own, [torch.tensor(PEER), own.clone()], reduction="none")
    assert both.tolist() == pytest.approx([4 / 6, 1 / 2])


def test_fp16_inputs_give_the_fp32_answer():
    # 300 - (-300) = 600; 600^2 = 360000 overflows fp16 (max 65504) but not fp32
    own = torch.full((1, 4), 300.0, dtype=torch.float16)
    peer = torch.full((1, 4), -300.0, dtype=torch.float16)
    penalty = codistill_penalty(own, peer)
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(360000.0)
    # bf16 inputs too, on values bf16 holds exactly
    ref = codistill_penalty(torch.tensor(OWN), torch.tensor(PEER))
    assert codistill_penalty(torch.tensor(OWN, dtype=torch.bfloat16),
                             torch.tensor(PEER, dtype=torch.bfloat16)).item() == pytest.approx(ref.item())


def test_kl_hand_computed():
    # own logits (0, 0): p_own = (1/2, 1/2); peer logits (ln 3, 0): p_peer = (3/4, 1/4)
    # KL(peer || own) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812
    own = torch.tensor([[0.0, 0.0]])
    peer = torch.tensor([[math.log(3.0), 0.0]])
    assert codistill_penalty(own, peer, kind="kl").item() == pytest.approx(0.130812, abs=1e-6)
    # T = 2: p_peer = softmax(ln3/2, 0) = (sqrt3, 1)/(sqrt3 + 1) = (0.633975, 0.366025), p_own uniform
    # KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.150506 - 0.114165 = 0.036341
    # times T^2 = 4: 0.145363
    assert codistill_penalty(own, peer, kind="kl", temperature=2.0).item() == pytest.approx(0.145363, abs=1e-5)


def test_kl_matches_torch_kl_div_and_its_gradient():
    torch.manual_seed(0)
    own = torch.randn(3, 4, 11, requires_grad=True)
    peer = torch.randn(3, 4, 11)
    ours = codistill_penalty(own, peer, kind="kl", temperature=1.5)
    ref = F.kl_div(F.log_softmax(own / 1.5, -1), F.log_softmax(peer / 1.5, -1),
                   log_target=True, reduction="sum") * 1.5 ** 2
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ours, = torch.autograd.grad(ours, own)
    g_ref, = torch.autograd.grad(ref, own)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_inference_mode_peer_logits_can_be_used_in_backward(kind):
    own = torch.randn(2, 3, 5, requires_grad=True)
    with torch.inference_mode():
        peer = torch.randn(2, 3, 5)
    codistill_penalty(own, peer, kind=kind).backward()
    assert own.grad is not None and own.grad.abs().sum() > 0


def test_bad_arguments_are_named():
    own = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="kind"):
        codistill_penalty(own, own, kind="l1")
    with pytest.raises(ValueError, match="reduction"):
        codistill_penalty(own, own, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        codistill_penalty(own, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="empty"):
        codistill_penalty(own, [])


# -- schedules ----------------------------------------------------------------------


def schedule(alpha0=1.0, kind="constant", gamma=1.0, alpha_max=None, burn_in_updates=0):
    return AlphaSchedule(alpha0=alpha0, kind=kind, gamma=gamma, alpha_max=alpha_max,
                         burn_in_updates=burn_in_updates)


def test_constant_schedule():
    s = schedule(alpha0=0.5, gamma=1.1)  # gamma unused
    assert [s(epoch=e, num_updates=100 * e) for e in (1, 5, 50)] == [0.5, 0.5, 0.5]


def test_exponential_schedule_at_chosen_epochs():
    s = schedule(alpha0=2.0, kind="exponential", gamma=1.1)
    assert s(epoch=1) == pytest.approx(2.0)  # 2 * 1.1^0
    assert s(epoch=2) == pytest.approx(2.2)  # 2 * 1.1^1
    assert s(epoch=11) == pytest.approx(2.0 * 2.5937424601)  # 1.1^10 = 2.5937...


def test_step_schedule_counts_lr_decays():
    s = schedule(alpha0=1.0, kind="step", gamma=2.0)
    assert [s(epoch=40, num_lr_decays=d) for d in (0, 1, 3)] == [1.0, 2.0, 8.0]


def test_burn_in_and_cap():
    s = schedule(alpha0=1.0, kind="exponential", gamma=1.5, alpha_max=2.0, burn_in_updates=100)
    assert s(epoch=3, num_updates=99) == 0.0  # still burning in
    assert s(epoch=2, num_updates=100) == pytest.approx(1.5)  # 1.5^1
    assert s(epoch=3, num_updates=200) == pytest.approx(2.0)  # 1.5^2 = 2.25, capped at 2


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha0": -1.0}, "alpha"),
    ({"gamma": 0.0}, "gamma"),
    ({"alpha_max": -0.5}, "alpha_max"),
    ({"burn_in_updates": -1}, "burn_in"),
    ({"kind": "cosine"}, "schedule"),
])
def test_schedule_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedule(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_mse_matches_the_plain_computation(dtype, monkeypatch):
    # With a gradient needed, "mse"/"sum" runs the fused function; reduction="none" runs
    # the plain autograd path. Both must give the same value and the same gradient, with
    # several peers, padding, and chunks smaller than the input.
    from fairseq_codistill.core import loss

    monkeypatch.setattr(loss._SummedMSE, "CHUNK_BYTES", 8 * 11 * 3)  # 3 rows a chunk
    torch.manual_seed(0)
    base = torch.randn(2, 5, 11).to(dtype)
    peers = [torch.randn(2, 5, 11).to(dtype) for _ in range(3)]
    mask = torch.rand(2, 5) > 0.3
    fused_in = base.clone().requires_grad_()
    plain_in = base.clone().requires_grad_()
    fused = codistill_penalty(fused_in, peers, mask=mask)
    plain = codistill_penalty(plain_in, peers, mask=mask, reduction="none").sum()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    fused.backward()
    plain.backward()
    assert fused_in.grad.dtype == dtype
    assert torch.allclose(fused_in.grad.float(), plain_in.grad.float(), atol=1e-3 if dtype == torch.float16 else 1e-6)
    mean = codistill_penalty(base.clone().requires_grad_(), peers, mask=mask, reduction="mean")
    assert mean.item() == pytest.approx(plain.item() / int(mask.sum()), rel=1e-5)
