"""The snapshot exchange in-process: file format, atomicity, pruning, and PeerExchange."""
import contextlib
import io
import json
import logging
import os
import threading
import zipfile
import zlib

import pytest
import torch

from fairseq_codistill.exchange import peers as ex
from fairseq_codistill.exchange import snapshot as snapfile
from fairseq_codistill.exchange import storage


def tiny_state(seed=0):
    torch.manual_seed(seed)
    return {"w": torch.randn(4, 3), "b": torch.randn(3), "steps": torch.tensor([7], dtype=torch.int64)}


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("fp16", torch.float16),
                                                ("bf16", torch.bfloat16)])
def test_snapshot_round_trip_in_every_dtype(tmp_path, dtype, torch_dtype):
    state = tiny_state()
    path = tmp_path / snapfile.write_snapshot(tmp_path, 1, 500, snapfile.cast_state_dict(state, dtype), meta={"arch": "x"}, dtype=dtype)
    assert path == tmp_path / "model1" / "snapshot-0000000500.cds"
    snap = snapfile.read_snapshot(path)
    assert (snap.model_id, snap.num_updates, snap.dtype, snap.meta) == (1, 500, dtype, {"arch": "x"})
    assert snap.state_dict["w"].dtype == torch_dtype
    assert torch.equal(snap.state_dict["w"], state["w"].to(torch_dtype))
    assert snap.state_dict["steps"].dtype == torch.int64  # integer buffers are never cast
    assert snap.nbytes == path.stat().st_size


def test_fp16_snapshot_is_about_half_the_fp32_bytes(tmp_path):
    state = {"w": torch.randn(256, 256)}
    full = (tmp_path / snapfile.write_snapshot(tmp_path, 0, 1, snapfile.cast_state_dict(state, "fp32"), dtype="fp32")).stat().st_size
    half = (tmp_path / snapfile.write_snapshot(tmp_path, 1, 1, snapfile.cast_state_dict(state, "fp16"), dtype="fp16")).stat().st_size
    # 65536 params: 262144 bytes in fp32, 131072 in fp16, plus the same small overhead
    assert 0.49 < half / full < 0.52


def test_torch_zip_crcs_are_off_for_a_snapshot_only(tmp_path):
    """Ours checks the payload; torch's own zip CRCs would be a second pass nobody reads."""
    def zip_crcs(path):  # of the records with data; a snapshot's zip is followed by our trailer
        return {i.CRC for i in zipfile.ZipFile(io.BytesIO(path.read_bytes())).infolist() if i.file_size}

    for before in (True, False):
        torch.serialization.set_crc32_options(before)
        try:
            path = tmp_path / snapfile.write_snapshot(tmp_path, 0, 1, snapfile.cast_state_dict(tiny_state(), "fp32"), dtype="fp32")
            assert torch.serialization.get_crc32_options() is before  # the switch is restored
            with pytest.raises(TypeError):  # a save that fails before its first byte
                snapfile.write_snapshot(tmp_path, 0, 2, {"w": threading.Lock()}, dtype="fp32")
            assert torch.serialization.get_crc32_options() is before
        finally:
            torch.serialization.set_crc32_options(True)
        assert zip_crcs(path) == {0}
        assert torch.equal(snapfile.read_snapshot(path).state_dict["w"], tiny_state()["w"])
    # a checkpoint saved afterwards keeps its zip CRCs
    torch.save(tiny_state(), tmp_path / "checkpoint.pt")
    assert zipfile.ZipFile(tmp_path / "checkpoint.pt").testzip() is None
    assert 0 not in zip_crcs(tmp_path / "checkpoint.pt")


def test_pruning_keeps_the_newest_two_and_temp_files_are_never_listed(tmp_path):
    for u in (10, 20, 30, 40):
        snapfile.write_snapshot(tmp_path, 0, u, snapfile.cast_state_dict(tiny_state(u), "fp32"), dtype="fp32")
    (tmp_path / "model0" / ".tmp-abandoned").write_bytes(b"half a snapshot")
    assert [s.num_updates for s in snapfile.list_snapshots(tmp_path, 0)] == [40, 30]
    assert sorted(os.listdir(tmp_path / "model0")) == [
        ".tmp-abandoned", "snapshot-0000000030.cds", "snapshot-0000000040.cds"]


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    def explode(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        storage.atomic_write(tmp_path / "x.cds", explode)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good_bytes(tmp_path):
    path = tmp_path / snapfile.write_snapshot(tmp_path, 0, 5, snapfile.cast_state_dict(tiny_state(), "fp16"))
    return path.read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "not a complete snapshot"),  # truncated
    (lambda b: b[:-1], "not a complete snapshot"),
    (lambda b: b"", "not a complete snapshot"),
    (lambda b: os.urandom(len(b)), "not a complete snapshot"),  # random bytes
    (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "fails its checksum"),  # payload byte
    (lambda b: b[:-30] + bytes([b[-30] ^ 0x01]) + b[-29:], "header checksum"),  # header byte
    (lambda b: b"\0" * 10 + b, "payload length"),  # padded in front
])
def test_damaged_snapshots_raise_snapshot_error(tmp_path, good_bytes, damage, message):
    path = tmp_path / "bad.cds"
    path.write_bytes(damage(good_bytes))
    with pytest.raises(snapfile.SnapshotError, match=message):
        snapfile.read_snapshot(path)


def test_a_future_format_version_is_rejected_clearly(tmp_path, good_bytes):
    header_len, _, _ = snapfile._TRAILER.unpack(good_bytes[-snapfile._TRAILER.size:])
    end = len(good_bytes) - snapfile._TRAILER.size
    header = json.loads(good_bytes[end - header_len:end])
    header["format_version"] = 99
    new = json.dumps(header).encode()
    data = good_bytes[:end - header_len] + new + snapfile._TRAILER.pack(len(new), zlib.crc32(new), snapfile.MAGIC)
    with pytest.raises(snapfile.SnapshotError, match="format 99"):
        snapfile.parse_snapshot(data)


def test_peer_ids_for_each_topology():
    assert ex.peer_ids(1, 4, "all") == [0, 2, 3]
    assert ex.peer_ids(3, 4, "ring") == [0]
    assert ex.peer_ids(0, 2, "ring") == [1]


def exchange_config(root, model_id=0, num_models=2, **kw):
    values = dict(topology="all", interval=5, dtype="fp16", peer_dtype="same", max_staleness=0,
                  wait_for_peers=0.0, max_lead=0)
    return ex.ExchangeConfig(root=str(root), model_id=model_id, num_models=num_models,
                             **{**values, **kw})


@pytest.mark.parametrize("change, flag", [
    ({"num_models": 1}, "--codistill-num-models"),
    ({"model_id": 2}, "--codistill-id"),
    ({"model_id": -1}, "--codistill-id"),
    ({"interval": 0}, "--codistill-interval"),
    ({"topology": "star"}, "--codistill-topology"),
    ({"dtype": "int4"}, "--codistill-snapshot-dtype"),
    ({"peer_dtype": "fp8"}, "--codistill-peer-dtype"),
    ({"max_staleness": -1}, "--codistill-max-staleness"),
    ({"wait_for_peers": -2.0}, "--codistill-wait-for-peers"),
    ({"max_lead": -1}, "--codistill-max-lead"),
    ({"max_lead": 5}, "--codistill-max-lead"),  # without a wait
    ({"root": ""}, "--codistill-dir"),
])
def test_exchange_config_names_the_bad_flag(tmp_path, change, flag):
    cfg = exchange_config(tmp_path)
    cfg.validate()
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=flag):
        cfg.validate()


def test_exchange_dir_that_can_never_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="--codistill-dir"):
        ex.check_exchange_dir(afile)
    with pytest.raises(ValueError, match="--codistill-dir"):
        ex.check_exchange_dir(afile / "sub")


# -- PeerExchange ---------------------------------------------------------------------


def make_exchange(root, model_id, num_models=2, **kw):
    cfg = exchange_config(root, model_id, num_models, **kw)
    return ex.PeerExchange(cfg, build_peer=lambda meta: torch.nn.Linear(3, meta["out"]),
                           meta={"out": 2},
                           check_peer=lambda meta: None if meta["out"] == 2 else (_ for _ in ()).throw(
                               snapfile.SnapshotError(f"peer has {meta['out']} outputs, expected 2")))


def settle(exchange, num_updates, model):
    """Step until the background load of the chosen snapshot is swapped in."""
    exchange.step(num_updates, model)
    for peer in exchange.peers.values():
        if peer.pending is not None:
            peer.pending.result(timeout=10)
    exchange.step(num_updates + 1, model)


@contextlib.contextmanager
def exchanged_pair(tmp_path, **kw):
    """Models 0 and 1 with their exchanges, after model 0 swapped in model 1's update-5
    snapshot (model 0 reads it at its update 5 and swaps it in at 6)."""
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x0, x1 = make_exchange(tmp_path, 0, **kw), make_exchange(tmp_path, 1)
    try:
        x0.step(0, m0), x1.step(0, m1)
        assert x0.active_peers() == [] and x0.staleness() is None  # nobody has published
        x1.step(5, m1)
        x1.wait_for_write()
        settle(x0, 5, m0)
        yield x0, x1, m0, m1
    finally:
        x0.close(), x1.close()


def test_two_models_exchange_and_swap_at_the_next_update(tmp_path):
    with exchanged_pair(tmp_path) as (x0, x1, m0, m1):
        peers = x0.active_peers()
        assert len(peers) == 1 and not peers[0].training
        # fp16 snapshot, cast back to the training dtype: equal up to fp16 rounding
        assert peers[0].weight.dtype == torch.float32
        assert torch.allclose(peers[0].weight, m1.weight, atol=1e-3)
        assert x0.staleness() == 1  # our update 6, the snapshot's 5
        assert x0.bytes_read == (tmp_path / snapfile.list_snapshots(tmp_path, 1)[0].key).stat().st_size


def test_building_a_peer_leaves_the_random_state_alone(tmp_path):
    """A peer's construction draws initial weights; the training's dropout and batch order
    must not depend on when a peer arrives."""
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x0, x1 = make_exchange(tmp_path, 0), make_exchange(tmp_path, 1)
    try:
        x1.step(5, m1)
        x1.wait_for_write()
        torch.manual_seed(42)
        expected = torch.rand(3)
        torch.manual_seed(42)
        settle(x0, 5, m0)  # builds the peer (torch.nn.Linear draws its weights)
        assert len(x0.active_peers()) == 1
        assert torch.equal(torch.rand(3), expected)
    finally:
        x0.close(), x1.close()


def test_a_half_precision_peer_takes_the_models_fp32_inputs():
    peer = ex.place_peer(torch.nn.Linear(3, 2), torch.zeros(1), "bf16")
    assert peer.weight.dtype == torch.bfloat16
    out = peer(torch.ones(4, 3))  # an fp32 batch, as the model trains on it
    assert out.dtype == torch.bfloat16 and out.shape == (4, 2)
    assert ex.place_peer(peer, torch.zeros(1), "bf16")._forward_pre_hooks.__len__() == 1  # once


def test_peers_stay_out_of_autograd_under_inference_mode(tmp_path):
    with exchanged_pair(tmp_path) as (x0, _, m0, _):
        (peer,) = x0.active_peers()
        x = torch.randn(4, 3)
        with torch.inference_mode():
            peer_out = peer(x)
        loss = (m0(x) - peer_out).pow(2).sum()
        loss.backward()
        assert not peer_out.requires_grad and peer.weight.grad is None
        assert m0.weight.grad is not None


def test_a_bf16_peer_runs_a_transposed_batch_as_one_matmul(tmp_path):
    # torch.matmul folds a non-contiguous (B, T, C) input into one (B*T, C) mm only when
    # the weight requires grad; otherwise it broadcasts the weight for a bmm, which in bf16
    # on a CPU copies the weight once per row of B (fairseq's transformer: 6x slower).
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(3, 2).bfloat16(), torch.nn.Linear(3, 2).bfloat16()
    x0, x1 = make_exchange(tmp_path, 0), make_exchange(tmp_path, 1)
    try:
        x0.step(0, m0), x1.step(5, m1)
        x1.wait_for_write()
        settle(x0, 5, m0)
        (peer,) = x0.active_peers()
        assert peer.weight.dtype == torch.bfloat16
        batch = torch.randn(4, 5, 3, dtype=torch.bfloat16).transpose(0, 1)  # (T, B, C) view
        with torch.inference_mode(), torch.profiler.profile() as prof:
            out = peer(batch)
        ops = {e.key for e in prof.key_averages()}
        assert "aten::bmm" not in ops and "aten::mm" in ops, sorted(ops)
        assert torch.allclose(out.float(), batch.float() @ peer.weight.float().T + peer.bias.float(),
                              atol=0.05)
    finally:
        x0.close(), x1.close()


def test_a_bf16_peer_next_to_an_fp32_model(tmp_path):
    with exchanged_pair(tmp_path, peer_dtype="bf16") as (x0, _, m0, m1):
        (peer,) = x0.active_peers()
        assert m0.weight.dtype == torch.float32 and peer.weight.dtype == torch.bfloat16
        # fp16 snapshot read into bf16 (8 bits of mantissa): within 2^-8 relative
        assert torch.allclose(peer.weight.float(), m1.weight, rtol=2 ** -8, atol=1e-3)


def test_max_staleness_drops_an_old_peer(tmp_path):
    with exchanged_pair(tmp_path, max_staleness=8) as (x0, _, _, _):
        assert len(x0.active_peers()) == 1
        assert len(x0.active_peers(num_updates=13)) == 1  # 13 - 5 = 8: still allowed
        assert x0.active_peers(num_updates=14) == []  # 9 behind: dropped


def test_bad_and_incompatible_snapshots_are_skipped_with_one_warning(tmp_path, caplog):
    m0 = torch.nn.Linear(3, 2)
    (tmp_path / "model1").mkdir()
    (tmp_path / "model1" / "snapshot-0000000005.cds").write_bytes(b"garbage" * 10)
    x0 = make_exchange(tmp_path, 0)
    try:
        with caplog.at_level(logging.WARNING, logger="fairseq_codistill.exchange.peers"):
            settle(x0, 5, m0)
            settle(x0, 10, m0)  # the same bad file again: no second warning
        assert x0.active_peers() == []
        assert len([r for r in caplog.records if "skipping peer snapshot" in r.message]) == 1
        # a snapshot from a model with another output size: rejected by check_peer
        snapfile.write_snapshot(tmp_path, 1, 15, snapfile.cast_state_dict(torch.nn.Linear(3, 4).state_dict(), "fp16"),
                          meta={"out": 4})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fairseq_codistill.exchange.peers"):
            settle(x0, 15, m0)
        assert x0.active_peers() == []
        assert any("4 outputs, expected 2" in r.message for r in caplog.records)
        # then a good one is taken
        snapfile.write_snapshot(tmp_path, 1, 20, snapfile.cast_state_dict(torch.nn.Linear(3, 2).state_dict(), "fp16"),
                          meta={"out": 2})
        settle(x0, 20, m0)
        assert len(x0.active_peers()) == 1
    finally:
        x0.close()


def test_state_dict_round_trip(tmp_path):
    with exchanged_pair(tmp_path) as (x0, _, m0, _):
        x0.step(10, m0)
        x0.wait_for_write()
        state = x0.state_dict()
        assert state["peer_versions"] == {"1": 5} and state["last_published"] == 10
        assert state["num_loads"] == 1 and state["bytes_read"] > 0
        x0.close()  # a restart: the running job's lease would refuse a second model 0
        fresh = make_exchange(tmp_path, 0)
        fresh.load_state_dict(state)
        assert (fresh.last_published, fresh.num_loads, fresh.bytes_read) == (10, 1, state["bytes_read"])
        assert fresh.peer_versions() == {1: 5}  # what it had, until it reads model 1 again
        fresh.close()


def test_a_failed_publish_warns_and_training_goes_on(tmp_path, caplog, monkeypatch):
    m0 = torch.nn.Linear(3, 2)
    x0 = make_exchange(tmp_path, 0)

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    write = ex.write_snapshot
    monkeypatch.setattr(ex, "write_snapshot", no_space)
    try:
        with caplog.at_level(logging.INFO, logger="fairseq_codistill.exchange.peers"):
            x0.step(5, m0)
            x0.wait_for_write()
            assert [r.levelname for r in caplog.records if "could not publish" in r.message] == ["WARNING"]
            x0.step(6, m0)  # and the next update runs as usual
            monkeypatch.setattr(ex, "write_snapshot", write)  # the disk has room again
            x0.step(10, m0)
            x0.wait_for_write()
            x0.step(15, m0)
            x0.wait_for_write()
        # the listing at update 5 worked, but the write after it failed: the return is told once
        assert sum("answers again" in r.message for r in caplog.records) == 1
        assert [s.num_updates for s in snapfile.list_snapshots(x0.store, 0)] == [15, 10]
    finally:
        x0.close()


def test_wait_for_peers_waits_once_at_the_first_exchange_not_at_update_0(tmp_path):
    import threading
    import time

    m0, m1 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x0 = make_exchange(tmp_path, 0, wait_for_peers=5.0)
    try:
        t = time.monotonic()
        x0.step(0, m0)  # a fresh run: nobody can have published yet, so no wait
        assert time.monotonic() - t < 1.0
        # model 1 publishes 0.5 s after model 0 starts waiting at its first exchange
        x1 = make_exchange(tmp_path, 1)
        timer = threading.Timer(0.5, lambda: (x1.step(5, m1), x1.wait_for_write()))
        timer.start()
        t = time.monotonic()
        x0.step(5, m0)
        waited = time.monotonic() - t
        timer.join()
        assert 0.4 < waited < 4.0  # returned once the snapshot appeared, not after 5 s
        peer = x0.peers[1]  # and is loading it, or already swapped it in
        assert peer.pending is not None or peer.num_updates == 5
        t = time.monotonic()
        x0.step(10, m0)  # later exchanges never wait
        assert time.monotonic() - t < 1.0
        x1.close()
    finally:
        x0.close()


def test_max_lead_does_not_wait_for_a_peer_that_finished(tmp_path, caplog):
    """--codistill-max-lead 1: model 0 waits at each exchange for model 1 to catch up, but
    not once model 1 has ended (its lease is marked finished): it goes on within seconds."""
    import time

    m0, m1 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x0, x1 = make_exchange(tmp_path, 0, wait_for_peers=60.0, max_lead=1), make_exchange(tmp_path, 1)
    try:
        x1.step(5, m1)
        x1.close()  # model 1 ends at update 5, its lease marked finished
        x0.step(5, m0)  # its snapshot of update 5 is there: no wait
        with caplog.at_level(logging.INFO):
            t = time.monotonic()
            x0.step(10, m0)  # model 1 is 5 updates behind and will never publish again
            waited = time.monotonic() - t
        assert waited < 5.0
        assert any("their leases say they finished" in r.message for r in caplog.records)
        t = time.monotonic()
        x0.step(15, m0)  # given up on until it publishes again
        assert time.monotonic() - t < 1.0
    finally:
        x0.close()


def test_snapshot_is_a_copy_and_tied_weights_are_stored_once(tmp_path):
    shared = torch.nn.Parameter(torch.randn(64, 32))
    state = {"encoder.embed": shared, "decoder.embed": shared, "decoder.out": shared,
             "bias": torch.nn.Parameter(torch.zeros(32))}
    snap_state = snapfile.cast_state_dict(state, "fp32")
    # fp32 on the CPU: still a copy, or the writer would save weights being updated
    assert snap_state["encoder.embed"].data_ptr() != shared.data_ptr()
    with torch.no_grad():
        shared.add_(1.0)
    assert not torch.equal(snap_state["encoder.embed"], shared)
    # the three tied names share one copy, and the file stores it once
    assert snap_state["decoder.out"] is snap_state["encoder.embed"]
    path = tmp_path / snapfile.write_snapshot(tmp_path, 0, 1, snap_state, dtype="fp32")
    assert path.stat().st_size < 64 * 32 * 4 * 1.5  # one 8 KB matrix, not three
    back = snapfile.read_snapshot(path).state_dict
    assert torch.allclose(back["decoder.embed"], shared.detach() - 1.0, atol=1e-6)


def test_a_cast_fills_an_earlier_one_where_it_fits():
    shared = torch.nn.Parameter(torch.ones(4, 2))
    state = {"embed": shared, "out": shared, "bias": torch.nn.Parameter(torch.zeros(2))}
    first = snapfile.cast_state_dict(state, "fp16")
    with torch.no_grad():
        shared.mul_(3.0)
    state["bias"] = torch.nn.Parameter(torch.zeros(3))  # a new shape: a new tensor
    again = snapfile.cast_state_dict(state, "fp16", out=first)
    assert again["embed"].data_ptr() == first["embed"].data_ptr()  # no new memory
    assert torch.equal(again["embed"], torch.full((4, 2), 3.0, dtype=torch.float16))
    assert again["out"] is again["embed"]  # still tied
    assert again["bias"].shape == (3,) and again["bias"].dtype == torch.float16
    # another dtype never reuses it
    assert snapfile.cast_state_dict(state, "fp32", out=first)["embed"].dtype == torch.float32


def test_a_peer_that_cannot_be_built_is_skipped_and_training_goes_on(tmp_path, caplog):
    # the snapshot is sound, but this install cannot build its architecture
    snapfile.write_snapshot(tmp_path, 1, 5, snapfile.cast_state_dict(torch.nn.Linear(3, 2).state_dict(), "fp16"),
                      meta={"out": 2})
    cfg = exchange_config(tmp_path)

    def unknown_arch(meta):
        raise KeyError("arch 'transformer_xxl' is not registered")

    x0 = ex.PeerExchange(cfg, build_peer=unknown_arch)
    try:
        with caplog.at_level(logging.WARNING, logger="fairseq_codistill.exchange.peers"):
            settle(x0, 5, torch.nn.Linear(3, 2))
            settle(x0, 10, torch.nn.Linear(3, 2))  # the same file: no second warning
        warnings = [r.message for r in caplog.records if "skipping peer snapshot" in r.message]
        assert len(warnings) == 1 and "transformer_xxl" in warnings[0]
        assert x0.active_peers() == []
    finally:
        x0.close()
