"""Storage: a directory and an S3 bucket (a real S3 API server on 127.0.0.1) behind one
interface, and snapshots in every dtype through both."""
import os
import subprocess
import sys

import pytest
import torch

from fairseq_codistill.exchange import snapshot as snapfile
from fairseq_codistill.exchange import storage
from fairseq_codistill.tools.launch import free_port
from fairseq_codistill.exchange.quantize import QMAX
from fairseq_codistill.exchange.storage import LocalStore, open_store, redact

from s3server import ENV


@pytest.fixture(params=["dir", "s3"])
def store(request, tmp_path):
    if request.param == "dir":
        return open_store(str(tmp_path / "x"))
    return open_store(request.getfixturevalue("s3_url"))


def test_a_url_picks_the_store():
    assert isinstance(open_store("/some/dir"), LocalStore)
    assert isinstance(open_store("file:///some/dir"), LocalStore)
    assert open_store("file:///some/dir").root.as_posix() == "/some/dir"
    with pytest.raises(ValueError, match="--codistill-dir is required"):
        open_store("")


def test_credentials_in_a_url_never_reach_a_message():
    assert redact("s3://AKIA123:s3cr3t@bucket/prefix") == "s3://***@bucket/prefix"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"
    with pytest.raises(ValueError) as e:
        open_store("nosuchproto://user:s3cr3t@bucket/x")
    assert "--codistill-dir" in str(e.value) and "s3cr3t" not in str(e.value)


def test_write_read_list_delete(store):
    store.check()
    store.write_bytes("model0/a", b"first")
    assert store.list("model0") == ["a"]
    store.write_bytes("model0/b", b"second")  # listed at once: no stale listing cache
    assert sorted(store.list("model0")) == ["a", "b"]
    assert sorted(store.list("")) == ["model0"]
    assert store.read_bytes("model0/b") == b"second"
    store.write_bytes("model0/a", b"replaced")
    assert store.read_bytes("model0/a") == b"replaced"
    with pytest.raises(FileExistsError):
        store.write_bytes("model0/a", b"create-only", create_only=True)
    assert store.read_bytes("model0/a") == b"replaced"
    store.delete("model0/a")
    store.delete("model0/a")  # already gone: not an error
    assert store.list("model0") == ["b"]
    assert store.list("model9") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("model0/a")


@pytest.mark.parametrize("size", [1000, 12 << 20])
def test_a_failed_write_leaves_nothing(store, size):
    def explode(f):
        f.write(os.urandom(size))
        raise OSError("the job was killed mid-write")

    with pytest.raises(OSError, match="killed"):
        store.write("model0/snap", explode)
    assert store.list("model0") == []
    store.write("model0/snap", lambda f: f.write(b"x" * size))  # and a whole one appears whole
    assert len(store.read_bytes("model0/snap")) == size


def test_create_only_without_hard_links(tmp_path, monkeypatch):
    """A filesystem without hard links (some FUSE mounts) still gets whole files, and an
    existing one is still refused."""
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(storage.os, "link", no_links)
    store = open_store(str(tmp_path))
    store.write_bytes("model0/a", b"first", create_only=True)
    with pytest.raises(FileExistsError):
        store.write_bytes("model0/a", b"second", create_only=True)
    assert store.read_bytes("model0/a") == b"first" and store.list("model0") == ["a"]


def test_missing_bucket_names_the_flag(s3_server):
    with pytest.raises(ValueError, match=r"--codistill-dir s3://no-such-bucket/x: the bucket .* does not exist"):
        open_store("s3://no-such-bucket/x").check()


def test_unreachable_endpoint_fails_fast_naming_the_flag(tmp_path):
    pytest.importorskip("s3fs")
    env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    code = "from fairseq_codistill.exchange.storage import open_store; open_store('s3://b/x').check()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "ValueError: --codistill-dir s3://b/x: the store cannot be used" in proc.stderr
    assert "testing" not in proc.stderr  # the secret key


def tiny_state():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    return {"w": lin.weight.data, "b": lin.bias.data, "steps": torch.tensor([3])}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_snapshots_round_trip_in_every_dtype(store, dtype):
    state = tiny_state()
    key = snapfile.write_snapshot(store, 1, 40, snapfile.cast_state_dict(state, dtype),
                                  meta={"arch": "x"}, dtype=dtype, create_only=True)
    assert key == "model1/snapshot-0000000040.cds"
    assert [s.num_updates for s in snapfile.list_snapshots(store, 1)] == [40]
    snap = snapfile.read_snapshot(store, key)
    assert (snap.model_id, snap.num_updates, snap.dtype, snap.meta) == (1, 40, dtype, {"arch": "x"})
    assert snap.nbytes == len(store.read_bytes(key))
    w, back = state["w"], snap.state_dict["w"].float()
    if dtype == "int8":
        # per output row r: scale_r = max|w_r| / 127, and rounding moves a weight by at
        # most half a step (the fp16 scale adds its own rounding, 2^-11 relative)
        step = w.abs().amax(dim=1, keepdim=True) / QMAX
        assert ((back - w).abs() <= step * (0.5 + 1e-3)).all()
        assert not torch.equal(back, w)
    else:
        assert torch.equal(back, w.to(snapfile.SNAPSHOT_DTYPES[dtype]).float())
    assert torch.equal(snap.state_dict["steps"], state["steps"])  # integers are never cast
    with pytest.raises(FileExistsError):  # another job writing as model 1
        snapfile.write_snapshot(store, 1, 40, snapfile.cast_state_dict(state, dtype),
                                dtype=dtype, create_only=True)


def test_int8_snapshots_are_a_quarter_of_fp32(tmp_path):
    torch.manual_seed(0)
    state = torch.nn.Transformer(d_model=64, nhead=2, num_encoder_layers=1,
                                 num_decoder_layers=1, dim_feedforward=128).state_dict()
    sizes = {}
    for dtype in ("fp32", "int8"):
        key = snapfile.write_snapshot(tmp_path, 0, 1 if dtype == "fp32" else 2,
                                      snapfile.cast_state_dict(state, dtype), dtype=dtype, keep=5)
        sizes[dtype] = (tmp_path / key).stat().st_size
    # weights: 1 byte + a 2-byte scale per row instead of 4 bytes; biases and norms: 2
    assert 0.24 < sizes["int8"] / sizes["fp32"] < 0.30


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "flipped"])
def test_damaged_objects_are_rejected_whole(store, damage):
    key = snapfile.write_snapshot(store, 0, 5, snapfile.cast_state_dict(tiny_state(), "int8"),
                                  dtype="int8")
    good = store.read_bytes(key)
    bad = {"truncated": good[: len(good) // 2], "garbage": os.urandom(len(good)), "empty": b"",
           "flipped": good[:200] + bytes([good[200] ^ 0xFF]) + good[201:]}[damage]
    store.write_bytes(key, bad)
    with pytest.raises(snapfile.SnapshotError):
        snapfile.read_snapshot(store, key)


def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends():
    outage = storage.Outage()
    assert not outage.answered()  # a store that never failed has nothing to end
    assert [outage.failed(), outage.failed(), outage.failed()] == [True, False, False]
    assert [outage.answered(), outage.answered()] == [True, False]
    assert outage.failed()  # the next failure starts a new outage


def _mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return str(path) in f.read()


def test_a_snapshot_in_a_directory_is_mapped_not_copied(tmp_path):
    state = tiny_state()
    key = snapfile.write_snapshot(tmp_path, 0, 40, snapfile.cast_state_dict(state, "fp16"))
    snap = snapfile.read_snapshot(tmp_path, key)
    assert _mapped(tmp_path / key)  # torch.load(mmap=True): the tensors are the file's pages
    (tmp_path / key).unlink()  # pruned while in use: the mapping keeps the pages
    assert torch.equal(snap.state_dict["w"], state["w"].half())
    assert torch.equal(snap.state_dict["steps"], state["steps"])


def test_a_snapshot_with_a_long_header_is_read(store):
    # torch.load finds a zip's directory only within 64 KiB of the end: a payload followed
    # by a longer header is loaded from a copy of the payload alone (it once failed).
    meta = {"blob": "x" * (100 << 10)}
    key = snapfile.write_snapshot(store, 0, 40, snapfile.cast_state_dict(tiny_state(), "fp32"),
                                  meta=meta, dtype="fp32")
    snap = snapfile.read_snapshot(store, key)
    assert snap.meta == meta
    assert torch.equal(snap.state_dict["w"], tiny_state()["w"])
    if isinstance(store, LocalStore):
        assert not _mapped(store.local_path(key))


@pytest.mark.parametrize("proc", [True, False])
def test_a_snapshot_replaced_or_pruned_while_read(tmp_path, monkeypatch, proc):
    # torch.load opens the file again after the CRC. Through /proc/self/fd it loads the
    # file already open, whatever a writer does to the path meanwhile; without /proc, by
    # the path, a replaced or pruned file reads as gone (EBUSY, as s3fs says it), so that
    # the exchange reads again at its next step (a pruned read once failed as "does not
    # hold a state dict", which rejects a key for good).
    if not proc:
        exists = os.path.exists
        monkeypatch.setattr(snapfile.os.path, "exists",
                            lambda p: False if str(p).startswith("/proc/self/fd/") else exists(p))
    key = snapfile.write_snapshot(tmp_path, 0, 40, snapfile.cast_state_dict(tiny_state(), "fp32"),
                                  dtype="fp32")
    other = snapfile.write_snapshot(tmp_path / "o", 0, 40,
                                    snapfile.cast_state_dict({"w": torch.zeros(2)}, "fp32"), dtype="fp32")
    load = torch.load

    def replacing_load(*args, **kwargs):
        os.replace(tmp_path / "o" / other, tmp_path / key)
        return load(*args, **kwargs)

    def pruning_load(*args, **kwargs):
        (tmp_path / key).unlink()
        return load(*args, **kwargs)

    for change in (replacing_load, pruning_load):
        snapfile.write_snapshot(tmp_path, 0, 40, snapfile.cast_state_dict(tiny_state(), "fp32"),
                                dtype="fp32")
        monkeypatch.setattr(snapfile.torch, "load", change)
        if proc:
            snap = snapfile.read_snapshot(tmp_path, key)
            assert torch.equal(snap.state_dict["w"], tiny_state()["w"])
        else:
            with pytest.raises(snapfile.SnapshotError, match="pruned or replaced") as e:
                snapfile.read_snapshot(tmp_path, key)
            assert storage.replaced_while_read(e.value.__cause__)
