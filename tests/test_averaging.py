"""LocalSGD and DiLoCo over the exchange, in-process: the mean and the outer step against
hand-worked values and torch's own SGD, two models averaging through a directory, a
missing model, the outer state in a checkpoint, and the fp32 masters of fairseq's
mixed-precision optimizer."""
import concurrent.futures
import logging
import time

import pytest
import torch

from fairseq_codistill.exchange import averaging as avg
from fairseq_codistill.exchange import snapshot as snapfile

from test_exchange import exchange_config


def test_the_mean_of_known_weights():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([-0.5])}
    c = {"w": torch.tensor([2.0, 1.0], dtype=torch.float16), "b": torch.tensor([3.0], dtype=torch.bfloat16)}
    mean = avg.mean_of([a, b, c])
    # w: (1 + 3 + 2) / 3 = 2, (2 + 6 + 1) / 3 = 3; b: (0.5 - 0.5 + 3) / 3 = 1; always fp32
    assert torch.equal(mean["w"], torch.tensor([2.0, 3.0])) and torch.equal(mean["b"], torch.tensor([1.0]))
    assert mean["w"].dtype == torch.float32
    assert torch.equal(a["w"], torch.tensor([1.0, 2.0]))  # inputs untouched


def test_the_mean_goes_into_the_weights_given_bit_for_bit():
    """An averaging step sums into the model's own fp32 tensors (no model-sized buffer);
    the bits are those of a fresh mean, so every model still holds the same ones."""
    torch.manual_seed(0)
    states = [{"w": torch.randn(1000).half(), "n": torch.randn(3).bfloat16()} for _ in range(3)]
    weights = {"w": torch.zeros(1000), "n": torch.zeros(3, dtype=torch.bfloat16)}
    fresh = avg.mean_of(states)
    into = avg.mean_of(states, out=weights)
    assert into["w"] is weights["w"] and torch.equal(weights["w"], fresh["w"])
    # a tensor that is not fp32 cannot hold the fp32 mean: a new one, the weights untouched
    assert into["n"] is not weights["n"] and torch.equal(into["n"], fresh["n"])
    assert torch.equal(weights["n"], torch.zeros(3, dtype=torch.bfloat16))


def test_a_mean_summed_chunk_by_chunk_has_the_bits_of_one_summed_whole(monkeypatch):
    torch.manual_seed(0)
    # 2.5 chunks of 4, a (3, 5) matrix: the last chunk is short and crosses rows
    states = [{"w": torch.randn(3, 5).half(), "s": torch.randn(()).half()} for _ in range(3)]
    monkeypatch.setattr(avg, "CHUNK", 4)
    chunked = avg.mean_of(states)
    # the reference: the same casts, sums and division of whole tensors
    whole = (states[0]["w"].float() + states[1]["w"].float() + states[2]["w"].float()) / 3
    assert chunked["w"].shape == (3, 5) and torch.equal(chunked["w"], whole)
    assert torch.equal(chunked["s"], (states[0]["s"].float() + states[1]["s"].float()
                                      + states[2]["s"].float()) / 3)


@pytest.mark.parametrize("chunk", [4, 1 << 17])
def test_int8_snapshots_averaged_as_read_have_the_bits_of_dequantised_ones(monkeypatch, chunk):
    """An int8 snapshot's matrices are dequantised chunk by chunk as they are summed, not
    into a model-sized copy: the mean and the outer step hold the bits of the whole
    dequantised tensors. Chunks of 4 elements end at whole rows: rows of 5 (a chunk a
    row), of 2 (two rows a chunk), and a (3, 2, 2) conv-like weight (rows of 4)."""
    from fairseq_codistill.exchange.quantize import dequantize_int8, quantize_int8, unpack_int8
    monkeypatch.setattr(avg, "CHUNK", chunk)
    torch.manual_seed(0)
    payloads = [quantize_int8({"a": torch.randn(3, 5), "b": torch.randn(5, 2),
                               "c": torch.randn(3, 2, 2), "bias": torch.randn(7)})
                for _ in range(3)]
    as_read = [unpack_int8(p) for p in payloads]
    whole = [dequantize_int8(p) for p in payloads]
    for name in ("a", "b", "c"):
        assert isinstance(as_read[0][name], avg.Int8Matrix)
    expected, got = avg.mean_of(whole), avg.mean_of(as_read)
    # the reference by hand: q * scale per row in fp32, summed in order, divided by 3
    by_hand = sum(p["a"].float() * p["a@scale"].float().unsqueeze(1) for p in payloads) / 3
    assert torch.equal(expected["a"], by_hand)
    for name in expected:
        assert got[name].shape == expected[name].shape and torch.equal(got[name], expected[name]), name
    theta = {k: torch.zeros_like(v) for k, v in expected.items()}
    outer = [avg.OuterSGD(theta, lr=0.7, momentum=0.9) for _ in range(2)]
    for _ in range(2):  # the second step uses the momentum
        a, b = outer[0].step(whole), outer[1].step(as_read)
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_one_outer_step_is_nesterov_sgd_on_the_outer_gradient():
    outer = avg.OuterSGD({"w": torch.tensor([1.0, -2.0])}, lr=0.7, momentum=0.9)
    # step 1: g = theta - mean = (1 - 0.6, -2 - -1) = (0.4, -1); buf = g;
    # theta -= 0.7 * (g + 0.9 buf) = 0.7 * 1.9 g: 1 - 0.532 = 0.468, -2 + 1.33 = -0.67
    theta = outer.step([{"w": torch.tensor([0.6, -1.0])}])["w"]
    assert torch.allclose(theta, torch.tensor([0.468, -0.67]), atol=1e-6)
    # step 2: g = 0.468 - 0.3 = 0.168; buf = 0.9 * 0.4 + 0.168 = 0.528;
    # theta -= 0.7 * (0.168 + 0.9 * 0.528) = 0.7 * 0.6432 = 0.45024 -> 0.01776
    theta = outer.step([{"w": torch.tensor([0.3, -0.67])}])["w"]
    assert theta[0].item() == pytest.approx(0.01776, abs=1e-6)

    # the same as torch.optim.SGD(nesterov=True) on a parameter whose gradient is theta - mean
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for mean in (torch.tensor([0.6, -1.0]), torch.tensor([0.3, -0.67])):
        p.grad = p.detach() - mean
        sgd.step()
    assert torch.equal(theta, p.detach())


def test_the_outer_step_chunk_by_chunk_and_resumed_is_torch_sgd_bit_for_bit(monkeypatch):
    """Two models' fp16 weights, in chunks of 4 of a (3, 5) matrix, over 4 steps with a
    save and a load after the second: the bits of torch.optim.SGD(nesterov=True) on the
    outer gradients theta - mean, the mean taken whole."""
    monkeypatch.setattr(avg, "CHUNK", 4)
    torch.manual_seed(0)
    start = torch.randn(3, 5)
    models = [[{"w": (start + 0.1 * torch.randn(3, 5)).half()} for _ in range(2)] for _ in range(4)]
    outer = avg.OuterSGD({"w": start}, lr=0.7, momentum=0.9)
    for states in models[:2]:
        outer.step(states)
    resumed = avg.OuterSGD({"w": torch.zeros(3, 5)}, lr=0.7, momentum=0.9)
    resumed.load_state_dict(outer.state_dict())
    weights = {"w": torch.zeros(3, 5)}
    for states in models[2:]:
        theta = resumed.step(states, out=weights)["w"]
    assert theta is weights["w"]  # written into the model's own tensors

    p = torch.nn.Parameter(start.clone())
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for a, b in ((s[0]["w"], s[1]["w"]) for s in models):
        p.grad = p.detach() - (a.float() + b.float()) / 2
        sgd.step()
    assert torch.equal(theta, p.detach())
    # a checkpoint of the torch.optim.SGD outer state (before 2026-12-02) resumes the same
    old = avg.OuterSGD({"w": torch.zeros(3, 5)}, lr=0.7, momentum=0.9)
    old.load_state_dict({"theta": {"w": p.detach().clone()}, "optimizer": sgd.state_dict()})
    assert torch.equal(old.buffers[0], sgd.state[p]["momentum_buffer"])


def test_outer_lr_one_without_momentum_is_localsgd():
    outer = avg.OuterSGD({"w": torch.tensor([4.0])}, lr=1.0, momentum=0.0)
    assert torch.equal(outer.step([{"w": torch.tensor([2.5])}])["w"], torch.tensor([2.5]))


# -- two models in one process ------------------------------------------------------------


def averaging(root, model_id, method="localsgd", shapes=None, **kw):
    cfg = exchange_config(root, model_id, method=method, wait_for_peers=kw.pop("wait_for_peers", 30.0),
                          **{"dtype": "fp32", **kw})
    return avg.WeightAveraging(cfg, meta={"arch": "linear"}, shapes=shapes)


def linear(weight, bias):
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([weight])), m.bias.copy_(torch.tensor([bias]))
    return m


def weights_of(model):
    return lambda: dict(model.named_parameters())


def step_both(xs, models, num_updates):
    """Each model's step in its own thread: an averaging step waits for the others."""
    with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
        for f in [pool.submit(x.step, num_updates, weights_of(m)) for x, m in zip(xs, models)]:
            f.result(timeout=60)


def test_two_models_replace_their_weights_with_the_mean(tmp_path):
    m0, m1 = linear([1.0, 2.0], 0.0), linear([3.0, -2.0], 1.0)
    xs = [averaging(tmp_path, 0), averaging(tmp_path, 1)]
    try:
        step_both(xs, (m0, m1), 0)
        assert torch.equal(m0.weight.detach(), torch.tensor([[1.0, 2.0]]))  # update 0: nothing
        step_both(xs, (m0, m1), 5)  # interval 5
        for m in (m0, m1):  # ((1 + 3) / 2, (2 - 2) / 2), bias (0 + 1) / 2
            assert torch.equal(m.weight.detach(), torch.tensor([[2.0, 0.0]]))
            assert torch.equal(m.bias.detach(), torch.tensor([0.5]))
        assert xs[0].last_averaged == [0, 1] and xs[0].num_loads == 1 and xs[0].bytes_read > 0
        assert set(xs[0].seconds) == {"publish", "wait", "read", "average"}
    finally:
        for x in xs:
            x.close()


def test_the_next_average_reuses_the_published_copy_not_the_published_snapshot(tmp_path):
    m0, m1 = linear([1.0, 2.0], 0.0), linear([3.0, -2.0], 1.0)
    xs = [averaging(tmp_path, 0), averaging(tmp_path, 1)]
    try:
        step_both(xs, (m0, m1), 5)  # both (2, 0), bias 0.5
        buffer = xs[0]._cast["weight"].data_ptr()
        with torch.no_grad():
            m0.weight.add_(2.0), m1.weight.sub_(1.0)  # (4, 2) and (1, -1)
        step_both(xs, (m0, m1), 10)
        for m in (m0, m1):  # ((4 + 1) / 2, (2 - 1) / 2)
            assert torch.equal(m.weight.detach(), torch.tensor([[2.5, 0.5]]))
        assert xs[0]._cast["weight"].data_ptr() == buffer  # filled again, not reallocated
        for x in xs:
            x.wait_for_write()
        # each snapshot holds the weights model 0 published then, before its average
        published = [snapfile.read_snapshot(tmp_path, snapfile.snapshot_key(0, u)).state_dict
                     for u in (5, 10)]
        assert torch.equal(published[0]["weight"], torch.tensor([[1.0, 2.0]]))
        assert torch.equal(published[1]["weight"], torch.tensor([[4.0, 2.0]]))
    finally:
        for x in xs:
            x.close()


def test_diloco_steps_the_shared_weights_with_the_models_mean_change(tmp_path):
    m0, m1 = linear([1.0, 1.0], 0.0), linear([1.0, 1.0], 0.0)  # one initial theta
    xs = [averaging(tmp_path, i, "diloco") for i in (0, 1)]
    try:
        step_both(xs, (m0, m1), 0)  # theta = the initial weights
        with torch.no_grad():  # 5 inner steps later
            m0.weight.copy_(torch.tensor([[0.8, 1.2]])), m1.weight.copy_(torch.tensor([[0.4, 1.0]]))
        step_both(xs, (m0, m1), 5)
        # mean (0.6, 1.1); g = theta - mean = (0.4, -0.1); at the default momentum 0.5
        # theta -= 0.7 * (1 + 0.5) * g = 1.05 g
        expected = torch.tensor([[1 - 0.42, 1 + 0.105]])
        for m in (m0, m1):
            assert torch.allclose(m.weight.detach(), expected, atol=1e-6)
        assert torch.equal(m0.weight, m1.weight)  # the same bits in both models
    finally:
        for x in xs:
            x.close()


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_models_agree_bit_for_bit_after_averaging_rounded_snapshots(tmp_path, dtype):
    """Each model averages its own weights as its peers read them, so all agree."""
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    before = m0.weight.detach().clone()
    xs = [averaging(tmp_path, i, dtype=dtype) for i in (0, 1)]
    try:
        step_both(xs, (m0, m1), 5)
        assert torch.equal(m0.weight, m1.weight) and torch.equal(m0.bias, m1.bias)
        assert not torch.equal(m0.weight, before)
    finally:
        for x in xs:
            x.close()


def test_an_int8_average_publishes_the_payload_it_averages_and_fills_it_again(tmp_path):
    """With int8 snapshots a model quantises its weights once, on the training thread, and
    the writer saves that payload: what it averages as its own is what its peer reads.
    The next step fills the same int8 tensors again."""
    from fairseq_codistill.exchange.quantize import dequantize_int8, quantize_int8
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    w0, w1 = m0.weight.detach().clone(), m1.weight.detach().clone()
    xs = [averaging(tmp_path, i, dtype="int8") for i in (0, 1)]
    try:
        step_both(xs, (m0, m1), 5)
        q = xs[0]._cast["weight"]
        assert q.dtype == torch.int8 and q.shape == (8, 16)
        for x in xs:
            x.wait_for_write()
        snap = snapfile.read_snapshot(tmp_path, snapfile.snapshot_key(0, 5), dequantize=False)
        assert snap.dtype == "int8" and torch.equal(snap.state_dict["weight"], q)
        # the mean of both models' weights as quantised and dequantised, by hand
        deq = [dequantize_int8(quantize_int8({"w": w}))["w"] for w in (w0, w1)]
        assert torch.equal(m0.weight.detach(), (deq[0] + deq[1]) / 2)
        assert torch.equal(m0.weight, m1.weight)
        step_both(xs, (m0, m1), 10)
        assert xs[0]._cast["weight"] is q  # filled again, not reallocated
    finally:
        for x in xs:
            x.close()


def test_a_missing_model_is_waited_for_once_then_left_out(tmp_path, caplog):
    m0 = linear([1.0, 2.0], 0.0)
    x0 = averaging(tmp_path, 0, wait_for_peers=0.5)
    try:
        with caplog.at_level(logging.WARNING):
            start = time.monotonic()
            x0.step(5, weights_of(m0))
            first = time.monotonic() - start
            start = time.monotonic()
            x0.step(10, weights_of(m0))
            second = time.monotonic() - start
        assert first >= 0.5 and second < 0.4  # not waited for again: it never published
        warned = [r.message for r in caplog.records if "no snapshot of update" in r.message]
        assert len(warned) == 2 and "model(s) [1] have no snapshot of update 5 after 0s" in warned[0]
        assert torch.equal(m0.weight.detach(), torch.tensor([[1.0, 2.0]]))  # its own mean
        assert x0.last_averaged == [0]
    finally:
        with caplog.at_level(logging.WARNING):
            x0.close()
    assert "model 0 never averaged with another model" in caplog.records[-1].message


def test_a_model_that_finished_is_not_waited_for(tmp_path, caplog):
    """Model 1 ends (its budget ran out) before model 0's next averaging step: model 0 reads
    its finished lease and averages alone within a few seconds, not --codistill-wait-for-peers."""
    m0, m1 = linear([1.0, 2.0], 0.0), linear([3.0, -2.0], 1.0)
    xs = [averaging(tmp_path, 0, wait_for_peers=60.0), averaging(tmp_path, 1, wait_for_peers=60.0)]
    try:
        step_both(xs, (m0, m1), 5)
        assert torch.equal(m0.weight.detach(), torch.tensor([[2.0, 0.0]]))  # the mean of both
        xs[1].close()
        with caplog.at_level(logging.WARNING):
            start = time.monotonic()
            xs[0].step(10, weights_of(m0))
            waited = time.monotonic() - start
        assert waited < 5.0 and xs[0].last_averaged == [0]
        assert torch.equal(m0.weight.detach(), torch.tensor([[2.0, 0.0]]))  # its own mean
        assert any("model(s) [1] finished training before update 10" in r.message for r in caplog.records)
        assert not any("no snapshot of update" in r.message for r in caplog.records)
    finally:
        xs[0].close()


def test_a_snapshot_of_another_shape_is_left_out_with_one_error(tmp_path, caplog):
    """A snapshot that got past the start-up check (these exchanges have no shapes in
    their leases to compare) is left out, said once per peer, not at every step."""
    m0, m1 = torch.nn.Linear(2, 1), torch.nn.Linear(3, 1)
    xs = [averaging(tmp_path, 0), averaging(tmp_path, 1)]
    try:
        before = m0.weight.detach().clone()
        with caplog.at_level(logging.WARNING):
            step_both(xs, (m0, m1), 5)
            step_both(xs, (m0, m1), 10)
        assert torch.equal(m0.weight.detach(), before)
        said = [r for r in caplog.records if "leaving model 1 out of every average" in r.message]
        assert len(said) == 1 and said[0].levelno == logging.ERROR
        assert "from update 5 on" in said[0].message
        assert "averaging needs models of one architecture" in said[0].message
    finally:
        for x in xs:
            x.close()


def test_the_outer_state_resumes_where_it_was(tmp_path):
    """DiLoCo's shared weights and momentum go into the checkpoint: a resumed exchange
    makes the same outer steps as one that never stopped."""
    def run(root, stop_at=None):
        m0, m1 = linear([1.0, 1.0], 0.0), linear([1.0, 1.0], 0.0)
        xs = [averaging(root, i, "diloco") for i in (0, 1)]
        for u in (0, 5, 10, 15):
            if u == stop_at:  # a restart: new exchanges from the saved state
                states = [x.state_dict() for x in xs]
                for x in xs:
                    x.close()
                xs = [averaging(root, i, "diloco") for i in (0, 1)]
                for x, state in zip(xs, states):
                    x.load_state_dict(state)
            step_both(xs, (m0, m1), u)
            with torch.no_grad():  # inner steps
                m0.weight.add_(torch.tensor([[-0.1, 0.05]])), m1.weight.add_(torch.tensor([[0.02, -0.2]]))
        for x in xs:
            x.close()
        return m0.weight.detach()

    assert torch.equal(run(tmp_path / "a"), run(tmp_path / "b", stop_at=10))


def test_models_that_disagree_on_the_method_fail_at_start_up(tmp_path):
    x0 = averaging(tmp_path, 0, "diloco")
    try:
        with pytest.raises(ValueError, match=r"^--codistill-method localsgd disagrees with model 0"):
            averaging(tmp_path, 1, "localsgd")
    finally:
        x0.close()


LINEAR_2 = avg.weight_shapes(dict(torch.nn.Linear(2, 1).named_parameters()))
LINEAR_3 = avg.weight_shapes(dict(torch.nn.Linear(3, 1).named_parameters()))


@pytest.mark.parametrize("change, message", [
    ({"interval": 15}, r"^--codistill-interval 15 disagrees with model 0 .*, which trains with "
                       r"--codistill-interval 5"),
    ({"asynchronous": True}, r"^--codistill-async on disagrees with model 0 .*, which trains "
                             r"with --codistill-async off"),
    ({"shapes": LINEAR_3}, r"^--codistill-method localsgd: model 0 .* averages weights of another "
                           r"architecture .*: its weight is of shape \(1, 2\) where this model's "
                           r"is of shape \(1, 3\)\. localsgd and diloco need every model of one "
                           r"architecture; --codistill-method distill codistills models that differ"),
])
def test_models_that_cannot_average_both_refuse_before_training(tmp_path, change, message):
    """The model that starts second is refused by its lease; it leaves the lease behind,
    and the first refuses at its start-up check, before update 1, with the same reason
    seen from its side."""
    x0 = averaging(tmp_path, 0, shapes=LINEAR_2)
    m0 = linear([1.0, 2.0], 0.0)
    try:
        with pytest.raises(ValueError, match=message):
            averaging(tmp_path, 1, **{"shapes": LINEAR_2, **change})
        start = time.monotonic()
        with pytest.raises(ValueError, match="disagrees with model 1|averages weights of another"):
            x0.step(0, weights_of(m0))
        assert time.monotonic() - start < 5  # the lease was there: no wait
        assert torch.equal(m0.weight.detach(), torch.tensor([[1.0, 2.0]]))
    finally:
        x0.close()


def test_the_start_up_check_waits_for_a_peer_and_passes_models_that_agree(tmp_path):
    x0 = averaging(tmp_path, 0, shapes=LINEAR_2, wait_for_peers=0.3)
    try:
        start = time.monotonic()
        x0.step(0, weights_of(linear([1.0, 2.0], 0.0)))  # no model 1: waited for, then on
        assert 0.3 <= time.monotonic() - start < 5
        x1 = averaging(tmp_path, 1, shapes=LINEAR_2)
        x1.step(0, weights_of(linear([1.0, 2.0], 0.0)))  # model 0 is there: no wait
        x1.close()
    finally:
        x0.close()


@pytest.mark.parametrize("change, flag", [
    ({"wait_for_peers": 0.0}, "--codistill-wait-for-peers"),
    ({"topology": "ring"}, "--codistill-topology"),
    ({"max_lead": 5}, "--codistill-max-lead"),
    ({"outer_lr": 0.0}, "--codistill-outer-lr"),
    ({"outer_momentum": 1.0}, "--codistill-outer-momentum"),
    ({"method": "gossip"}, "--codistill-method"),
])
def test_averaging_settings_name_the_bad_flag(tmp_path, change, flag):
    cfg = exchange_config(tmp_path, method="diloco", wait_for_peers=10.0)
    cfg.validate()
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=flag):
        cfg.validate()


# -- what fairseq's optimizer steps ---------------------------------------------------------


def test_the_weights_averaged_are_the_fp32_masters_of_a_bf16_model():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    from fairseq_codistill.fairseq_plugin.task import sync_half_precision_copy, trained_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "data", "--arch", "transformer", "--optimizer", "sgd", "--lr", "0.1", "--bf16", "--cpu"])
    cfg = convert_namespace_to_omegaconf(args)
    optimizer = FP16Optimizer.build_optimizer(cfg, list(model.parameters()))
    weights = trained_weights(model, optimizer)
    assert set(weights) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert all(t.dtype == torch.float32 for t in weights.values())
    # the optimizer's own fp32 copies, not new ones
    assert {t.data_ptr() for t in weights.values()} == {p.data_ptr() for p in optimizer.fp32_params}
    weights["0.weight"].fill_(0.123456789)  # what an averaging step does, then the sync
    sync_half_precision_copy(optimizer)
    assert torch.equal(model[0].weight, torch.full((3, 4), 0.123456789).to(torch.bfloat16))
    assert optimizer.fp32_params[0].data[0, 0].item() == pytest.approx(0.123456789)  # kept in fp32


def test_flat_fp32_masters_are_sliced_in_parameter_order():
    """fairseq flattens the masters of --fp16 on a GPU into one buffer per device."""
    from fairseq_codistill.fairseq_plugin.task import trained_weights

    model = torch.nn.Linear(2, 3)  # weight (3, 2), then bias (3,)

    class FlatOptimizer:
        fp16_params = list(model.parameters())
        fp32_params = {None: torch.arange(9.0)}  # None: the CPU's device index
        has_flat_params = True

    weights = trained_weights(model, FlatOptimizer())
    assert torch.equal(weights["weight"], torch.arange(6.0).view(3, 2))
    assert torch.equal(weights["bias"], torch.tensor([6.0, 7.0, 8.0]))
    weights["bias"].zero_()
    assert torch.equal(FlatOptimizer.fp32_params[None][6:], torch.zeros(3))  # views, not copies


def test_the_weights_averaged_keep_a_modules_own_buffers_out():
    """Batch-norm statistics are in the state dict and averaged; a buffer a module makes for
    itself (persistent=False, as fairseq's sinusoidal positions) is not: through an fp16
    snapshot it would come back rounded, unlike a resumed run's, which makes it anew."""
    from fairseq_codistill.codistillation import model_weights
    from fairseq_codistill.fairseq_plugin.task import trained_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    model[0].register_buffer("positions", torch.arange(4.0), persistent=False)

    class PlainOptimizer:  # fp32: the parameters are their own masters
        pass

    expected = {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"}
    assert set(model_weights(model)) == expected  # num_batches_tracked: an integer, kept out
    assert set(trained_weights(model, PlainOptimizer())) == expected
