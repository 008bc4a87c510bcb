"""Fault injection: killed peers, write/read races, storage faults, garbage in the exchange
directory, and bad command lines. One model's trouble must never stop or corrupt another.

Bounded by default; ``RELIABILITY_SCALE=10 pytest -m reliability`` runs the long variant
(ten times the kills, the race's length and the fuzz examples). Figures print at the end.
"""
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import time
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PLUGIN, TINY_ARCH, TINY_TRAIN, cpu_env, json_logs, record_figure, run, tool
from fairseq_codistill.exchange import peers as ex
from fairseq_codistill.exchange import snapshot as snapfile
from fairseq_codistill.fairseq_plugin.checkpoints import is_complete, load_checkpoint_state

pytestmark = pytest.mark.reliability
SCALE = int(os.environ.get("RELIABILITY_SCALE", "1"))
INTERVAL = 5


# -- 1. killed peers ---------------------------------------------------------------------


def wait_for(predicate, timeout, step=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def job_pids(run_dir):
    try:
        state = json.loads((run_dir / "launch.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {int(k[5:]): v["pid"] for k, v in state.items() if v["status"] == "running"}


def saved_updates(log_text):
    return [int(u) for u in re.findall(r"Saved checkpoint .*? @ (\d+) updates", log_text)]


RESTART = "=== fairseq-codistill-launch: restart"


def resumed_from(attempt_log):
    """The update an attempt's checkpoint load resumed it at (0: none found), or None if it
    never got as far as loading one (killed while starting up)."""
    loaded = re.search(r"Loaded checkpoint .* @ (\d+) updates", attempt_log)
    if loaded:
        return int(loaded.group(1))
    return 0 if "No existing checkpoint found" in attempt_log else None


def kill_at(kind, victim, run_dir, xdir):
    """Wait for the moment ``kind`` in job ``victim`` and SIGKILL it; return what was hit."""
    pid = job_pids(run_dir).get(victim)
    if pid is None:
        return None
    if kind == "publish":  # a snapshot temp file exists: the job is inside a publish
        hit = wait_for(lambda: any(n.startswith(".tmp-") for n in os.listdir(xdir / f"model{victim}")), 20)
    elif kind == "checkpoint":  # fairseq is writing (.tmp) or copying a checkpoint
        save = run_dir / f"model{victim}"
        before = {p.name: p.stat().st_mtime_ns for p in save.glob("checkpoint*.pt")}

        def writing():
            if any(save.glob("*.pt.tmp")):
                return True
            return any(p.stat().st_mtime_ns != before.get(p.name) for p in save.glob("checkpoint*.pt"))
        hit = wait_for(writing, 20)
    else:
        time.sleep(random.uniform(0.2, 2.0))
        hit = True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return kind if hit else "random"


@pytest.mark.e2e
def test_killed_peers_survive_resume_and_never_load_a_torn_snapshot(data_bin, tmp_path):
    run_dir, xdir = tmp_path / "run", tmp_path / "x"
    # Wider than the other tests' model so that publishing and checkpointing take long
    # enough to be caught in the act.
    wide = [a if a not in ("32", "64") else {"32": "128", "64": "512"}[a] for a in TINY_ARCH]
    cmd = [tool("fairseq-codistill-launch"), "--num-models", "3", "--threads-per-model", "1",
           "--codistill-dir", xdir, "--save-dir", run_dir, "--restart-failed",
           "--max-restarts", str(10 * SCALE), "--",
           data_bin, *TINY_TRAIN, *wide, "--criterion", "codistill_ce",
           "--codistill-interval", str(INTERVAL), "--codistill-snapshot-dtype", "fp32",
           "--codistill-max-lead", str(2 * INTERVAL), "--codistill-wait-for-peers", "60",
           "--max-update", str(60 + 40 * SCALE), "--save-interval-updates", "5"]
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=cpu_env())
    rng = random.Random(0)
    kills = []
    try:
        assert wait_for(lambda: len(list(xdir.glob("model*/snapshot-*"))) >= 3, 240, 0.2)
        for k in range(3 * SCALE):
            victim = rng.randrange(3)
            kind = ("publish", "checkpoint", "random")[k % 3]
            log = run_dir / f"model{victim}" / "train.log"
            log_before, pid = log.read_text(), job_pids(run_dir).get(victim)
            hit = kill_at(kind, victim, run_dir, xdir)
            if hit is None:
                continue  # that job had already finished
            kills.append({"victim": victim, "kind": hit, "saved": max(saved_updates(log_before), default=0)})
            restarts = log_before.count(RESTART) + 1
            # before the next kill, wait until the launcher has restarted it (a new pid in its
            # state: the old one stays there until it notices) and the restart has loaded its
            # checkpoint, on a busy machine many seconds later
            wait_for(lambda: job_pids(run_dir).get(victim) not in (None, pid)
                     and log.read_text().count(RESTART) >= restarts
                     and resumed_from(log.read_text().split(RESTART)[restarts]) is not None, 120, 0.2)
            time.sleep(2)
        out = launcher.communicate(timeout=600)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert kills, "no job was killed"
    assert launcher.returncode == 0, out  # every job finished, the killed ones after restarts

    torn_loads = lost = survived = 0
    for i in range(3):
        log = (run_dir / f"model{i}" / "train.log").read_text()
        # a reader that met a damaged file would say so; none may, since files appear whole
        torn_loads += len(re.findall(r"skipping peer snapshot: .*(checksum|complete|truncated|header)", log))
        # the k-th kill of model i caused its k-th restart; it is judged by the first attempt
        # from then on that got as far as loading a checkpoint (a restart killed again while
        # starting up loaded nothing, and its successor must load at least as much)
        resumed = [resumed_from(attempt) for attempt in log.split(RESTART)[1:]]
        mine = [k for k in kills if k["victim"] == i]
        for k, kill in enumerate(mine):
            loads = [r for r in resumed[k:] if r is not None]
            if loads and loads[0] >= kill["saved"]:
                survived += 1
            else:
                lost += 1
        assert json_logs(log)[-1]["num_updates"] == 60 + 40 * SCALE
        assert is_complete(run_dir / f"model{i}" / "checkpoint_last.pt")
        # no temp file is left behind in the exchange directory after the restarts
        assert not [n for n in os.listdir(xdir / f"model{i}") if n.startswith(".tmp-")]
    # every killed job was picked up again by a peer after it came back
    record_figure("killed peers", "kills (victim, moment)",
                  ", ".join(f"model{k['victim']}@{k['kind']}" for k in kills))
    record_figure("killed peers", "kills survived", f"{survived}/{len(kills)}")
    record_figure("killed peers", "torn loads", torn_loads)
    record_figure("killed peers", "checkpoints lost", lost)
    assert torn_loads == 0 and lost == 0 and survived == len(kills)


@pytest.mark.e2e
def test_a_torn_checkpoint_last_is_restored_and_a_restart_by_hand_resumes(data_bin, tmp_path):
    save = tmp_path / "m0"
    train = [tool("fairseq-train"), data_bin, *TINY_TRAIN, "--criterion", "codistill_ce",
             "--task", "codistill_translation", "--codistill-dir", tmp_path / "x",
             "--codistill-id", "0", "--codistill-interval", str(INTERVAL), "--save-dir", save,
             "--save-interval-updates", "10"]
    run([*train, "--max-update", "20"])
    # what a SIGKILL in the middle of fairseq's copy to checkpoint_last.pt leaves behind
    last = save / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert not is_complete(last)
    proc = run([*train, "--max-update", "30"])  # the same command, by hand
    out = proc.stdout + proc.stderr
    assert "checkpoint_last.pt was torn" in out
    assert re.search(r"Loaded checkpoint .* @ 20 updates", out)
    assert json_logs(out)[-1]["num_updates"] == 30
    record_figure("killed peers", "torn checkpoint_last.pt restored by hand-restart", "yes")


# -- 2. write/read race --------------------------------------------------------------------


def _writer(root, seconds, out):
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        count += 1
        # every value equals the update number: a reader can check content against header
        state = {"w": torch.full((128, 128), float(count)), "b": torch.full((64,), float(count))}
        snapfile.write_snapshot(root, 0, count, state, dtype="fp32")
    out.put(("writer", count))


def _reader(root, seconds, out):
    stats = {"attempted": 0, "ok": 0, "vanished": 0, "torn": 0, "mismatched": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        snaps = snapfile.list_snapshots(root, 0)
        if not snaps:
            continue
        stats["attempted"] += 1
        try:
            snap = snapfile.read_snapshot(root, snaps[0].key)
        except snapfile.SnapshotError as e:
            stats["vanished" if isinstance(e.__cause__, FileNotFoundError) else "torn"] += 1
            continue
        values = {float(t.unique().item()) for t in snap.state_dict.values()}
        if values != {float(snap.num_updates)}:
            stats["mismatched"] += 1
        stats["ok"] += 1
    out.put(("reader", stats))


def test_write_read_race(tmp_path):
    seconds, readers = 4.0 * SCALE, 3
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(tmp_path, seconds, out))]
    procs += [ctx.Process(target=_reader, args=(tmp_path, seconds, out)) for _ in range(readers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    published = next(v for k, v in results if k == "writer")
    total = {k: sum(r[k] for kind, r in results if kind == "reader")
             for k in ("attempted", "ok", "vanished", "torn", "mismatched")}
    leaked = [n for n in os.listdir(tmp_path / "model0") if not n.startswith("snapshot-")]
    record_figure("write/read race", f"{seconds:.0f}s, 1 writer, {readers} readers",
                  f"published {published}, reads attempted {total['attempted']}, ok {total['ok']}, "
                  f"vanished before open {total['vanished']}, torn {total['torn']}, "
                  f"mismatched {total['mismatched']}, files leaked {len(leaked)}")
    assert published > 20 and total["ok"] > 20
    assert total["torn"] == 0 and total["mismatched"] == 0
    assert leaked == [] and len(os.listdir(tmp_path / "model0")) == snapfile.KEEP


# -- 3. storage faults ---------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A size-limited file system (tmpfs); tests fall back to injected faults without root."""
    mnt = tmp_path / "fs"
    mnt.mkdir()

    def mount(size, readonly=False):
        opts = f"size={size}" + (",ro" if readonly else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (not root); faults are injected in test_exchange")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def train_alone(data_bin, tmp_path, xdir, max_update, check=True):
    return run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--criterion", "codistill_ce",
                "--task", "codistill_translation", "--codistill-dir", xdir,
                "--codistill-id", "0", "--codistill-interval", "2",
                "--codistill-snapshot-dtype", "fp32",
                "--save-dir", tmp_path / "save", "--max-update", str(max_update)], check=check)


@pytest.mark.e2e
def test_read_only_exchange_dir_fails_at_start_up(data_bin, tmp_path, small_fs):
    xdir = small_fs("1m", readonly=True)
    proc = train_alone(data_bin, tmp_path, xdir, 4, check=False)
    assert proc.returncode != 0
    assert f"--codistill-dir {xdir} is not writable (Read-only file system)" in proc.stderr
    assert not (tmp_path / "save" / "checkpoint_last.pt").exists()


@pytest.mark.e2e
def test_full_exchange_dir_mid_run_warns_and_training_goes_on(data_bin, tmp_path, small_fs):
    # an fp32 snapshot of the tiny model is ~0.27 MB: the first fits, the next ones do not
    xdir = small_fs("400k")
    proc = train_alone(data_bin, tmp_path, xdir, 12)
    out = proc.stdout + proc.stderr
    failures = out.count("could not publish snapshot")
    assert failures >= 3 and "No space left on device" in out
    assert [s.num_updates for s in snapfile.list_snapshots(xdir, 0)] == [2]  # the one that fitted
    assert not [n for n in os.listdir(xdir / "model0") if n.startswith(".tmp-")]  # cleaned up
    assert json_logs(out, "train")[-1]["num_updates"] == 12
    state = load_checkpoint_state(tmp_path / "save" / "checkpoint_last.pt", keys=["model"])
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    record_figure("storage faults", "full exchange dir", f"{failures} failed publishes warned, "
                  "training finished, checkpoint intact")


def test_missing_or_impossible_exchange_dirs(tmp_path):
    ex.check_exchange_dir(tmp_path / "a" / "b")  # missing: created
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--codistill-dir .* cannot create it"):
        ex.check_exchange_dir(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="--codistill-dir .* is not a directory"):
        ex.check_exchange_dir(tmp_path / "file")


def test_a_failed_read_mid_run_keeps_the_previous_peer(tmp_path, caplog):
    from test_exchange import exchanged_pair, settle

    with exchanged_pair(tmp_path) as (x0, _, m0, _):
        before = [p.weight.clone() for p in x0.active_peers()]
        # the next "snapshot" cannot be read at all (an I/O error, here a directory)
        (tmp_path / "model1" / "snapshot-0000000010.cds").mkdir()
        with caplog.at_level("WARNING", logger="fairseq_codistill.exchange.peers"):
            settle(x0, 10, m0)
        assert any("cannot read" in r.message for r in caplog.records)
        after = x0.active_peers()
        assert len(after) == 1 and torch.equal(after[0].weight, before[0])


# -- 4. garbage in the exchange directory ------------------------------------------------------


@pytest.fixture(scope="module")
def real_snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("snap")
    torch.manual_seed(0)
    state = snapfile.cast_state_dict(torch.nn.Linear(16, 8).state_dict(), "fp16")
    return (root / snapfile.write_snapshot(root, 1, 5, state, meta={"out": 2})).read_bytes()


def test_each_kind_of_garbage_is_skipped_with_one_warning(tmp_path, real_snapshot, caplog):
    from test_exchange import make_exchange, settle

    header_len, _, _ = snapfile._TRAILER.unpack(real_snapshot[-snapfile._TRAILER.size:])
    end = len(real_snapshot) - snapfile._TRAILER.size
    header = json.loads(real_snapshot[end - header_len:end])
    future = json.dumps({**header, "format_version": 2}).encode()
    other_vocab = json.dumps({**header, "meta": {"out": 4}}).encode()

    def with_header(new):
        return real_snapshot[:end - header_len] + new + snapfile._TRAILER.pack(len(new), zlib.crc32(new), snapfile.MAGIC)

    garbage = {
        "truncated": (real_snapshot[: len(real_snapshot) // 3], "no end marker"),
        "random bytes": (os.urandom(2000), "no end marker"),
        "another vocabulary": (with_header(other_vocab), "4 outputs, expected 2"),
        "future format version": (with_header(future), "format 2"),
    }
    m0 = torch.nn.Linear(3, 2)
    x0 = make_exchange(tmp_path, 0)
    peer_dir = tmp_path / "model1"
    peer_dir.mkdir()
    try:
        for u, (kind, (data, message)) in enumerate(garbage.items(), start=1):
            caplog.clear()
            (peer_dir / f"snapshot-{5 * u:010d}.cds").write_bytes(data)
            (peer_dir / f".tmp-stray-{u}").write_bytes(data)  # never looked at
            with caplog.at_level("WARNING", logger="fairseq_codistill.exchange.peers"):
                settle(x0, 5 * u, m0)
            warnings = [r.message for r in caplog.records if "skipping peer snapshot" in r.message]
            assert len(warnings) == 1 and message in warnings[0], (kind, warnings)
            assert x0.active_peers() == []
            os.unlink(peer_dir / f"snapshot-{5 * u:010d}.cds")
        record_figure("garbage", "kinds rejected with one warning each", ", ".join(garbage))
    finally:
        x0.close()


@settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_fuzz_random_bytes_never_escape_the_reader(data):
    try:
        snap = snapfile.parse_snapshot(data)
    except snapfile.SnapshotError:
        return
    pytest.fail(f"random bytes parsed as a snapshot: {snap}")


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0), flip=st.integers(min_value=0), bit=st.integers(0, 7),
       mode=st.sampled_from(["truncate", "flip"]))
def test_fuzz_damaged_real_snapshots_are_rejected_whole(real_snapshot, cut, flip, bit, mode):
    if mode == "truncate":
        data = real_snapshot[: cut % len(real_snapshot)]
    else:
        i = flip % len(real_snapshot)
        data = real_snapshot[:i] + bytes([real_snapshot[i] ^ (1 << bit)]) + real_snapshot[i + 1:]
    # CRC-32 catches every single-bit error, in the payload and (via the trailer) the header
    with pytest.raises(snapfile.SnapshotError):
        snapfile.parse_snapshot(data)


# -- 5. bad command lines ------------------------------------------------------------------

TASK = ["--task", "codistill_translation", "--codistill-id", "0"]
BAD_COMMAND_LINES = [
    (["--codistill-alpha", "-1"], "--codistill-alpha"),
    (["--codistill-alpha", "nan"], "--codistill-alpha"),
    (["--codistill-alpha", "abc"], "--codistill-alpha"),
    (["--codistill-gamma", "0"], "--codistill-gamma"),
    (["--codistill-gamma", "-1.1"], "--codistill-gamma"),
    (["--codistill-alpha-max", "-1"], "--codistill-alpha-max"),
    (["--codistill-burn-in-updates", "-1"], "--codistill-burn-in-updates"),
    (["--codistill-loss", "kl", "--codistill-temperature", "0"], "--codistill-temperature"),
    (["--codistill-temperature", "3"], "--codistill-temperature"),
    (["--codistill-loss", "l1"], "--codistill-loss"),
    (["--codistill-alpha-schedule", "cosine"], "--codistill-alpha-schedule"),
    (["--label-smoothing", "0.1"], "--label-smoothing"),
    (["--codistill-interval", "0"], "--codistill-interval"),
    (["--codistill-interval", "-5"], "--codistill-interval"),
    (["--codistill-id", "2", "--codistill-num-models", "2"], "--codistill-id"),
    (["--codistill-num-models", "1"], "--codistill-num-models"),
    (["--codistill-topology", "star"], "--codistill-topology"),
    (["--codistill-snapshot-dtype", "int4"], "--codistill-snapshot-dtype"),
    (["--codistill-max-staleness", "-1"], "--codistill-max-staleness"),
    (["--codistill-wait-for-peers", "-3"], "--codistill-wait-for-peers"),
    (["--codistill-max-lead", "-1"], "--codistill-max-lead"),
    (["--codistill-max-lead", "5"], "--codistill-max-lead"),  # with no wait to bound it
    (["--criterion", "cross_entropy"], "--criterion cross_entropy ignores the peers"),
    (["--codistill-method", "localsgd"], "--codistill-wait-for-peers must be > 0 with --codistill-method localsgd"),
    (["--codistill-method", "diloco", "--codistill-wait-for-peers", "60",
      "--codistill-outer-momentum", "1"], "--codistill-outer-momentum must be in [0, 1)"),
    (["--codistill-method", "gossip"], "--codistill-method"),
    (["--ddp-backend", "fully_sharded"], "--ddp-backend fully_sharded shards each model's weights"),
    (["NO_DIR"], "--codistill-dir is required"),
    (["NO_ID"], "--codistill-id is required"),
    (["FILE_DIR"], "--codistill-dir"),
]


def parse_and_build(data_bin, xdir, flags):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    base = [str(data_bin), *TINY_ARCH, "--user-dir", PLUGIN, "--cpu", "--criterion", "codistill_ce", *TASK]
    if "NO_DIR" not in flags:
        base += ["--codistill-dir", str(xdir)]
    if "NO_ID" in flags:
        base.remove("--codistill-id"), base.remove("0")
    if "FILE_DIR" in flags:
        (xdir.parent / "afile").write_text("")
        base += ["--codistill-dir", str(xdir.parent / "afile")]
    flags = [f for f in flags if f not in ("NO_DIR", "NO_ID", "FILE_DIR")]
    args = options.parse_args_and_arch(options.get_training_parser(), base + flags)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.build_criterion(cfg.criterion)


@pytest.mark.parametrize("flags, named", BAD_COMMAND_LINES, ids=[" ".join(f) for f, _ in BAD_COMMAND_LINES])
def test_bad_command_line_fails_before_training_naming_the_flag(data_bin, tmp_path, capsys, flags, named):
    with pytest.raises((ValueError, SystemExit)) as e:
        parse_and_build(data_bin, tmp_path / "x", flags)
    message = str(e.value) if e.type is ValueError else capsys.readouterr().err
    assert named in message, message
    record_figure("bad command lines", "rejected naming the flag", f"{len(BAD_COMMAND_LINES)} of "
                  f"{len(BAD_COMMAND_LINES)} NMT cases + {len(BAD_LAUNCHES)} launcher cases")


def test_ring_with_two_models_is_fine(data_bin, tmp_path):
    parse_and_build(data_bin, tmp_path / "x", ["--codistill-topology", "ring", "--codistill-num-models", "2"])


CE = ["--criterion", "codistill_ce"]
BAD_LAUNCHES = [
    (["--num-models", "1"], "--num-models must be >= 2"),
    (["--", "data", *CE, "--codistill-id", "1"], "--codistill-id is set by the launcher"),
    (["--", "data", *CE, "--save-dir=x"], "--save-dir is set by the launcher"),
    ([], "fairseq-train arguments are missing"),
    (["--gpus-per-model", "4", "--", "data", *CE], "--gpus-per-model 4 x --num-models 2 needs 8 GPUs"),
    (["--max-restarts", "-1", "--", "data", *CE], "--max-restarts must be >= 0"),
    (["--", "data"], "--criterion cross_entropy (fairseq default) ignores the peers"),
    (["--ranks-per-model", "0", "--", "data", *CE], "--ranks-per-model must be >= 1"),
    (["--ranks-per-model", "2", "--share-gpus", "--", "data", *CE], "--share-gpus runs each model on one GPU"),
    (["--ranks-per-model", "2", "--", "data", *CE, "--ddp-backend", "c10d"],
     "--ddp-backend c10d does not train on a CPU"),
    (["--ranks-per-model", "2", "--", "data", *CE, "--distributed-world-size", "4"],
     "--distributed-world-size is set by the launcher for each rank"),
    (["--", "data", "--criterion", "label_smoothed_cross_entropy"],
     "--criterion label_smoothed_cross_entropy ignores the peers"),
]


@pytest.mark.parametrize("flags, message", BAD_LAUNCHES, ids=[" ".join(f) for f, _ in BAD_LAUNCHES])
def test_bad_launcher_command_lines(tmp_path, flags, message):
    head = [] if flags[:1] == ["--num-models"] else ["--num-models", "2"]
    proc = run([tool("fairseq-codistill-launch"), *head, "--codistill-dir", tmp_path / "x",
                "--save-dir", tmp_path / "s", *flags], check=False,
               env={**cpu_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "s").exists()  # nothing started
