"""Asynchronous LocalSGD and DiLoCo (--codistill-async), in-process: two models on scalar
weights through a directory. Nothing waits; each peer version is averaged once, the
version it says; DiLoCo's outer step by hand; a resumed model does not average a version
again; a snapshot pruned while it is read is left out."""
import logging
import time

import pytest
import torch

from fairseq_codistill.exchange import averaging as avg

from test_exchange import exchange_config

WAIT = 30.0  # --codistill-wait-for-peers: only the start-up check may wait, and need not


def model(root, model_id, method="localsgd", **kw):
    cfg = exchange_config(root, model_id, method=method, interval=10, dtype="fp32",
                          wait_for_peers=WAIT, asynchronous=True, **kw)
    return avg.WeightAveraging(cfg, meta={"arch": "scalar"})


def scalar(value):
    return {"w": torch.tensor([float(value)])}


def step(x, num_updates, weights):
    """One step of ``x``, its snapshot written when it returns; the seconds it took."""
    start = time.monotonic()
    x.step(num_updates, lambda: weights)
    seconds = time.monotonic() - start
    x.wait_for_write()
    return seconds


@pytest.fixture
def pair(tmp_path):
    xs = [model(tmp_path, 0), model(tmp_path, 1)]
    yield xs
    for x in xs:
        x.close()


def test_a_peer_that_stops_publishing_stops_nothing(pair):
    x0, x1 = pair
    w0, w1 = scalar(1.0), scalar(3.0)
    step(x1, 10, w1)  # model 1 publishes 3 at its update 10, then stops
    assert x1.last_averaged == [1] and torch.equal(w1["w"], torch.tensor([3.0]))  # nothing yet
    assert step(x0, 10, w0) < 2.0  # (1 + 3) / 2, at once
    assert torch.equal(w0["w"], torch.tensor([2.0])) and x0.staleness == {1: 0}
    for u in (20, 30, 40):  # no fresh snapshot: no wait at all, and the weights are kept
        w0["w"].add_(1.0)
        assert step(x0, u, w0) < 1.0, "an asynchronous step waited"
        assert x0.last_averaged == [0]
        assert "average_staleness" not in x0.metrics() and x0.metrics()["averaged_models"] == 1
    assert torch.equal(w0["w"], torch.tensor([5.0]))


def test_the_newest_peer_version_is_averaged_once(pair, caplog):
    x0, x1 = pair
    step(x1, 10, scalar(4.0))
    step(x1, 20, scalar(8.0))  # model 1's versions: 10 and 20
    w0 = scalar(2.0)
    with caplog.at_level(logging.INFO):
        step(x0, 30, w0)
    # the newest, 20: (2 + 8) / 2 = 5; staleness 30 - 20 = 10
    assert torch.equal(w0["w"], torch.tensor([5.0]))
    assert x0.staleness == {1: 10} and x0.averaged_versions == {1: 20}
    assert x0.metrics()["average_staleness"] == 10 and x0.metrics()["averaged_models"] == 2
    assert "averaged models [0, 1] at update 30 (localsgd, async: model 1 at its update 20, " \
           "staleness 10)" in caplog.text
    w0["w"].fill_(6.0)
    step(x0, 40, w0)  # nothing newer than 20: no average, 6 stays
    assert torch.equal(w0["w"], torch.tensor([6.0])) and x0.last_averaged == [0]
    step(x1, 30, scalar(0.0))  # model 1's 30 is fresh at our 50: (6 + 0) / 2
    step(x0, 50, w0)
    assert torch.equal(w0["w"], torch.tensor([3.0])) and x0.staleness == {1: 20}


def test_diloco_takes_its_own_outer_step_on_the_mean(tmp_path):
    x0, x1 = (model(tmp_path, i, "diloco", outer_lr=0.7, outer_momentum=0.5) for i in (0, 1))
    try:
        w0 = scalar(1.0)
        step(x0, 0, w0)  # theta = 1
        step(x1, 10, scalar(0.2))
        w0["w"].fill_(0.6)
        step(x0, 10, w0)
        # mean (0.6 + 0.2) / 2 = 0.4; g = 1 - 0.4 = 0.6; buf = g = 0.6;
        # theta -= 0.7 * (g + 0.5 buf) = 0.7 * 0.9 = 0.63 -> 0.37
        assert w0["w"].item() == pytest.approx(0.37, abs=1e-6)
        w0["w"].fill_(0.5)
        step(x0, 20, w0)  # no fresh snapshot: weights, theta and momentum stay
        assert w0["w"].item() == 0.5 and x0.outer.theta[0].item() == pytest.approx(0.37, abs=1e-6)
        step(x1, 30, scalar(-0.1))
        step(x0, 30, w0)
        # mean (0.5 - 0.1) / 2 = 0.2; g = 0.37 - 0.2 = 0.17; buf = 0.5 * 0.6 + 0.17 = 0.47;
        # theta -= 0.7 * (0.17 + 0.5 * 0.47) = 0.7 * 0.405 = 0.2835 -> 0.0865
        assert w0["w"].item() == pytest.approx(0.0865, abs=1e-6)
    finally:
        x0.close(), x1.close()


def test_a_resumed_model_does_not_average_a_version_again(tmp_path):
    x0, x1 = model(tmp_path, 0), model(tmp_path, 1)
    try:
        step(x1, 20, scalar(8.0))
        w0 = scalar(2.0)
        step(x0, 30, w0)  # averages model 1's 20: 5
        state = x0.state_dict()
        assert state["averaged_versions"] == {"1": 20}
        x0.close()
        x0 = model(tmp_path, 0)  # a restart, from the checkpoint saved after update 30
        x0.load_state_dict(state)
        step(x0, 40, w0)
        assert torch.equal(w0["w"], torch.tensor([5.0])) and x0.last_averaged == [0]
        step(x1, 30, scalar(1.0))  # a new version is averaged
        step(x0, 50, w0)
        assert torch.equal(w0["w"], torch.tensor([3.0])) and x0.averaged_versions == {1: 30}
    finally:
        x0.close(), x1.close()


def test_a_snapshot_pruned_while_read_is_left_out_with_a_warning(pair, monkeypatch, caplog):
    x0, x1 = pair
    step(x1, 10, scalar(4.0))
    read = avg.read_snapshot

    def pruned_first(store, key, **kw):  # model 1 prunes it just as we start reading
        store.delete(key)
        return read(store, key, **kw)

    monkeypatch.setattr(avg, "read_snapshot", pruned_first)
    w0 = scalar(2.0)
    with caplog.at_level(logging.WARNING):
        step(x0, 10, w0)
    assert torch.equal(w0["w"], torch.tensor([2.0])) and x0.averaged_versions == {}
    assert "leaving model 1 out of the average at update 10" in caplog.text
    monkeypatch.setattr(avg, "read_snapshot", read)
    step(x1, 20, scalar(6.0))
    step(x0, 20, w0)  # the next version is averaged: (2 + 6) / 2
    assert torch.equal(w0["w"], torch.tensor([4.0]))


def test_async_is_for_the_averaging_methods_and_needs_no_wait(tmp_path):
    cfg = exchange_config(tmp_path, method="localsgd", asynchronous=True, wait_for_peers=0.0)
    cfg.validate()  # no wait needed: async never waits
    cfg.method = "distill"
    with pytest.raises(ValueError, match="^--codistill-async applies to --codistill-method "
                                         "localsgd or diloco only"):
        cfg.validate()
