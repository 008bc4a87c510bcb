"""Membership: leases refuse a second job with a live model's id, and jobs that disagree
on the number of models or the topology; a crashed job's lease does not block a restart."""
import json
import re
import logging
import subprocess
import sys
import time

import pytest
import torch

from fairseq_codistill.exchange import lease as leases
from fairseq_codistill.exchange.storage import open_store

from test_exchange import make_exchange


@pytest.fixture(params=["dir", "s3"])
def store(request, tmp_path):
    if request.param == "dir":
        return open_store(str(tmp_path / "x"))
    return open_store(request.getfixturevalue("s3_url"))


def test_a_lease_says_who_trains_as_the_model(store):
    holder = leases.acquire(store, 0, 2, "all")
    lease = json.loads(store.read_bytes("model0/lease.json"))
    assert lease["model_id"] == 0 and lease["num_models"] == 2 and lease["topology"] == "all"
    assert lease["pid"] > 0 and lease["host"] and not lease["finished"]
    holder.release()
    assert json.loads(store.read_bytes("model0/lease.json"))["finished"]


def test_a_second_job_with_a_live_id_fails_naming_the_flag(store):
    holder = leases.acquire(store, 0, 2, "all")
    with pytest.raises(ValueError, match=r"^--codistill-id 0: model 0 is already training") as e:
        leases.acquire(store, 0, 2, "all")
    assert re.search(r"renewed \d+s ago by pid \d+ on ", str(e.value))
    leases.acquire(store, 1, 2, "all").release()  # another id is welcome
    holder.release()
    leases.acquire(store, 0, 2, "all").release()  # a finished lease blocks nobody


@pytest.mark.parametrize("ours, flag", [
    ({"num_models": 3}, "--codistill-num-models"),
    ({"topology": "ring"}, "--codistill-topology"),
])
def test_disagreeing_jobs_fail_naming_the_flag(store, ours, flag):
    holder = leases.acquire(store, 0, 2, "all")
    kw = {"num_models": 2, "topology": "all", **ours}
    with pytest.raises(ValueError, match=f"^{flag} .* disagrees with model 0"):
        leases.acquire(store, 1, kw["num_models"], kw["topology"])
    holder.release()
    leases.acquire(store, 1, kw["num_models"], kw["topology"]).release()  # model 0 finished


def test_a_live_model_beyond_num_models_fails(store):
    holder = leases.acquire(store, 2, 3, "all")
    with pytest.raises(ValueError, match="--codistill-num-models"):
        leases.acquire(store, 0, 2, "all")
    holder.release()


def write_lease(store, **changes):
    now = time.time()
    lease = leases.Lease(model_id=0, host="another-host", pid=12345, job="", token="t",
                         started=now, heartbeat=now, num_models=2, topology="all")
    store.write_bytes("model0/lease.json", json.dumps({**lease.__dict__, **changes}).encode())


def test_a_stale_or_crashed_lease_does_not_block_a_restart(store, caplog):
    write_lease(store, heartbeat=time.time() - leases.TTL - 1)  # another host, went silent
    with caplog.at_level(logging.INFO):
        leases.acquire(store, 0, 2, "all").release()
    assert "took over model 0's lease from pid 12345 on another-host" in caplog.text
    # on this host, a dead pid shows at once, however fresh its heartbeat
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout
    write_lease(store, host=leases.socket.gethostname(), pid=int(dead))
    leases.acquire(store, 0, 2, "all").release()
    # a live lease on another host blocks, unless it is this SLURM job, requeued
    write_lease(store, job="4242")
    with pytest.raises(ValueError, match="--codistill-id 0"):
        leases.acquire(store, 0, 2, "all")


def test_a_requeued_slurm_job_takes_its_own_lease(store, monkeypatch):
    write_lease(store, job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    leases.acquire(store, 0, 2, "all").release()


def test_the_heartbeat_is_renewed_in_the_background(store):
    holder = leases.acquire(store, 0, 2, "all", heartbeat=0.2)
    first = json.loads(store.read_bytes("model0/lease.json"))["heartbeat"]
    deadline = time.monotonic() + 20
    while json.loads(store.read_bytes("model0/lease.json"))["heartbeat"] == first:
        assert time.monotonic() < deadline, "the heartbeat was not renewed"
        time.sleep(0.1)
    holder.release()


# -- what the exchange says about missing peers ------------------------------------------


def test_a_peer_that_never_publishes_is_warned_about_at_each_exchange(tmp_path, caplog):
    m0 = torch.nn.Linear(3, 2)
    x0 = make_exchange(tmp_path, 0, interval=5)
    with caplog.at_level(logging.WARNING):
        for u in range(0, 21):
            x0.step(u, m0)
        x0.close()
    warned = [r.message for r in caplog.records if "have not published" in r.message]
    assert len(warned) == 2  # at updates 15 and 20: 3 and 4 exchanges without model 1
    assert "[1] have not published a snapshot after 3 exchanges (update 15)" in warned[0]
    assert "model 0 trained without any peer" in caplog.records[-1].message


def test_a_peer_whose_lease_went_stale_is_warned_about(tmp_path, caplog):
    from test_exchange import exchanged_pair, settle

    with exchanged_pair(tmp_path) as (x0, x1, m0, m1):
        # model 1's job dies without a word: its lease stops being renewed
        x1.lease._stop.set()
        lease = json.loads((tmp_path / "model1" / "lease.json").read_text())
        lease.update(heartbeat=time.time() - leases.TTL - 5, host="another-host")
        (tmp_path / "model1" / "lease.json").write_text(json.dumps(lease))
        with caplog.at_level(logging.WARNING):
            settle(x0, 10, m0)
            x0._reader.submit(lambda: None).result()  # the lease check ran
        x1.lease = None  # a dead job marks nothing finished
    stale = [r.message for r in caplog.records if "lease is stale" in r.message]
    assert stale and "model 1's lease is stale" in stale[0] and "snapshot from update 5" in stale[0]
    assert not any("model 0 trained without any peer" in r.message for r in caplog.records)
    assert any("model 1 trained without any peer" in r.message for r in caplog.records)  # true


# -- start-ups while another model renews its lease ---------------------------------------

# Rewrites model 0's lease (live, on this host) as fast as the store takes it, as a model
# renewing its heartbeat would, only without pause; prints how many writes it made.
RENEWER = """
import json, os, sys, time
from fairseq_codistill.exchange import lease as leases
from fairseq_codistill.exchange.storage import open_store
store, stop = open_store(sys.argv[1]), sys.argv[2]
lease = leases.Lease(model_id=0, host=leases.socket.gethostname(), pid=os.getpid(), job="",
                     token="renewer", started=time.time(), heartbeat=time.time(),
                     num_models=2, topology="all")
writes = 0
while not os.path.exists(stop):
    leases._write(store, leases.replace(lease, heartbeat=time.time()))
    writes += 1
print(writes)
"""


def test_start_ups_succeed_while_another_model_rewrites_its_lease(s3_url, tmp_path):
    """A lease is rewritten every 30 s and at every exchange, so a job starting beside a
    running model reads leases that are being replaced. Reading one used to take a HEAD and
    then a GET pinned to its ETag, which failed (FileExpired, PreconditionFailed) whenever
    the lease was replaced in between: a job that died at start-up, at random."""
    from conftest import cpu_env

    store, stop = open_store(s3_url), tmp_path / "stop"
    renewer = subprocess.Popen([sys.executable, "-c", RENEWER, s3_url, str(stop)],
                               stdout=subprocess.PIPE, text=True, env=cpu_env())
    try:
        deadline = time.monotonic() + 60
        while leases.read_lease(store, 0) is None:
            assert time.monotonic() < deadline and renewer.poll() is None, "the renewer never wrote"
            time.sleep(0.05)
        started = 0
        for _ in range(20):
            leases.acquire(store, 1, 2, "all").release()
            started += 1
    finally:
        stop.touch()
        out, _ = renewer.communicate(timeout=60)
    assert started == 20 and renewer.returncode == 0
    writes = int(out)
    assert writes > 20, "the lease was hardly rewritten: the race was not exercised"
    from conftest import record_figure
    record_figure("object store", "start-ups of model 1 while model 0's lease is rewritten "
                  "in a tight loop", f"{started}/20 succeeded ({writes} rewrites meanwhile)")


class FlakyStore:
    """A store whose reads fail ``failures`` times (an outage), then answer."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.url = inner, failures, inner.url

    def read_bytes(self, key):
        if self.failures:
            self.failures -= 1
            raise OSError(5, "connection reset by the store")
        return self.inner.read_bytes(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_store_that_keeps_failing_at_start_up_names_the_flag(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(leases, "START_RETRY_SECONDS", 0.0)
    inner = open_store(str(tmp_path / "x"))
    leases.acquire(inner, 0, 2, "all").release()  # a lease to read
    with caplog.at_level(logging.WARNING):
        leases.acquire(FlakyStore(inner, failures=leases.START_ATTEMPTS - 1), 1, 2, "all").release()
    assert len([r for r in caplog.records if "trying again" in r.message]) == leases.START_ATTEMPTS - 1
    with pytest.raises(ValueError, match=r"^--codistill-dir .*: could not take model 1's lease: "
                                         r"the store failed 3 times in a row \(last: OSError"):
        leases.acquire(FlakyStore(inner, failures=10), 1, 2, "all")


def test_a_lease_torn_while_read_is_read_again(tmp_path):
    inner = open_store(str(tmp_path / "x"))
    leases.acquire(inner, 0, 2, "all").release()
    whole = inner.read_bytes("model0/lease.json")

    class Torn(FlakyStore):
        def read_bytes(self, key):  # a store without atomic writes, caught mid-write once
            if self.failures:
                self.failures -= 1
                return whole[: len(whole) // 2]
            return self.inner.read_bytes(key)

    assert leases.read_lease(Torn(inner, failures=1), 0).finished
    assert leases.read_lease(Torn(inner, failures=leases.READ_ATTEMPTS), 0) is None  # stays torn


# -- what averaging models must agree on ---------------------------------------------------

SHAPES = {"decoder.fc.weight": [8, 4], "encoder.layers.0.fc1.weight": [4, 4]}


@pytest.mark.parametrize("ours, theirs, message", [
    ({"interval": 10}, {"interval": 15},
     r"^--codistill-interval 10 disagrees with model 0 \(pid 12345 on another-host\), which "
     r"trains with --codistill-interval 15 in --codistill-dir "),
    ({"asynchronous": False}, {"asynchronous": True},
     r"^--codistill-async off disagrees with model 0 .* --codistill-async on in"),
    ({"shapes": SHAPES}, {"shapes": {**SHAPES, "encoder.layers.1.fc1.weight": [4, 4]}},
     r"its encoder\.layers\.1\.fc1\.weight is of shape \(4, 4\) where this model's is absent\. "
     r"localsgd and diloco need every model of one architecture; --codistill-method distill "),
    ({"shapes": SHAPES}, {"shapes": {**SHAPES, "decoder.fc.weight": [8, 2]}},
     r"^--codistill-method localsgd: model 0 .* its decoder\.fc\.weight is of shape \(8, 2\) "
     r"where this model's is of shape \(8, 4\)"),
])
def test_averaging_models_that_disagree_are_named_by_the_flag(store, ours, theirs, message):
    write_lease(store, **{"method": "localsgd", "interval": 10, "asynchronous": False,
                          "shapes": SHAPES, **theirs})
    terms = {"method": "localsgd", "interval": 10, "asynchronous": False, "shapes": SHAPES, **ours}
    with pytest.raises(ValueError, match=message):
        leases.acquire(store, 1, 2, "all", **terms)
    # the refused job left its lease, finished: it blocks no restart, and a model already
    # running sees the disagreement at its start-up check
    left = leases.read_lease(store, 1)
    assert left.finished and left.interval == terms["interval"] and left.shapes == terms["shapes"]
    leases.acquire(store, 1, 2, "all", **{**terms, **theirs}).release()  # agreeing: welcome


def test_a_lease_from_before_the_averaging_fields_is_read_and_not_compared(store):
    write_lease(store, method="localsgd")  # no interval, asynchronous or shapes
    old = json.loads(store.read_bytes("model0/lease.json"))
    for name in ("interval", "asynchronous", "shapes"):
        del old[name]
    store.write_bytes("model0/lease.json", json.dumps(old).encode())
    lease = leases.read_lease(store, 0)
    assert (lease.interval, lease.asynchronous, lease.shapes) == (None, None, None)
    leases.acquire(store, 1, 2, "all", method="localsgd", interval=10, asynchronous=True,
                   shapes=SHAPES).release()


def test_the_start_up_check_sees_a_peer_refused_after_this_model_started(store):
    holder = leases.acquire(store, 0, 2, "all", method="localsgd", interval=10, shapes=SHAPES)
    try:
        assert leases.check_peers(store, holder.lease, [1], seconds=0.2) == [1]  # not there yet
        with pytest.raises(ValueError, match="--codistill-interval 15"):
            leases.acquire(store, 1, 2, "all", method="localsgd", interval=15, shapes=SHAPES)
        with pytest.raises(ValueError, match=r"^--codistill-interval 10 disagrees with model 1"):
            leases.check_peers(store, holder.lease, [1], seconds=0.0)
    finally:
        holder.release()
    # a refused (finished) lease older than this model's start is not this run's: neither
    # compared nor waited for
    later = leases.acquire(store, 0, 2, "all", method="localsgd", interval=10, shapes=SHAPES)
    start = time.monotonic()
    assert leases.check_peers(store, later.lease, [1], seconds=30.0) == []
    assert time.monotonic() - start < 10
    later.release()


def test_an_exchange_dropped_without_close_still_marks_its_lease_finished(tmp_path):
    """fairseq's train() returns and its task, holding the exchange, is collected before
    the interpreter's exit: the lease must still say the model ended normally."""
    import gc

    from fairseq_codistill.exchange import averaging
    from test_averaging import averaging as make_averaging

    x = make_averaging(tmp_path, 0)
    assert isinstance(x, averaging.WeightAveraging)
    assert not json.loads((tmp_path / "model0" / "lease.json").read_text())["finished"]
    del x
    gc.collect()
    assert json.loads((tmp_path / "model0" / "lease.json").read_text())["finished"]
