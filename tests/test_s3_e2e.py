"""Codistillation through an object store: fairseq-train jobs exchanging snapshots in an
S3 bucket on a real S3 API server (moto, on 127.0.0.1), and the faults a store brings:
an outage mid-run, a second job with a live model's id, jobs that disagree."""
import json
import re
import subprocess
import sys
import time

import pytest

from conftest import TINY_TRAIN, cpu_env, json_logs, record_figure, run, tool
from fairseq_codistill.exchange.snapshot import list_snapshots
from fairseq_codistill.exchange.storage import open_store
from test_codistill_e2e import check_codistilled, loaded_from

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

INTERVAL = 5
START_UPS = 2  # fairseq-train start-ups under a lease rewritten in a loop (tests/test_lease.py: 20 acquires)
CODISTILL = TINY_TRAIN + ["--criterion", "codistill_ce", "--codistill-interval", str(INTERVAL),
                         "--codistill-alpha", "1"]


def launcher(data_bin, tmp_path, url, max_update, *extra):
    return [tool("fairseq-codistill-launch"), "--num-models", "2", "--threads-per-model", "1",
            "--codistill-dir", url, "--save-dir", tmp_path / "run", "--progress-interval", "1",
            "--", data_bin, *CODISTILL, "--max-update", max_update, *extra]


def log_of(tmp_path, i):
    return (tmp_path / "run" / f"model{i}" / "train.log").read_text()


def test_two_jobs_codistill_through_s3(data_bin, tmp_path, s3_url):
    run(launcher(data_bin, tmp_path, s3_url, 30, "--codistill-wait-for-peers", "60",
                 "--codistill-max-lead", str(INTERVAL)), timeout=400)
    store = open_store(s3_url)
    for i in (0, 1):
        log = log_of(tmp_path, i)
        check_codistilled(log, peers=[1 - i])
        assert json_logs(log)[-1]["codistill_loss"] > 0  # the penalty at the end
        assert [s.num_updates for s in list_snapshots(store, i)] == [25, 20]
        assert sorted(store.list(f"model{i}")) == [
            "lease.json", "snapshot-0000000020.cds", "snapshot-0000000025.cds"]
        assert "trained without any peer" not in log
        assert json.loads(store.read_bytes(f"model{i}/lease.json"))["finished"]  # ended normally


def test_a_store_outage_costs_warnings_not_the_run(data_bin, tmp_path, s3_url, s3_server):
    """The server stops for 12 s mid-run and comes back: both jobs finish, warn, and
    read each other again afterwards. The jobs train for a fixed time (fairseq's
    --stop-time-hours, 100 s), so the outage falls mid-run however fast the machine."""
    cmd = launcher(data_bin, tmp_path, s3_url, 100000, "--stop-time-hours", f"{100 / 3600:.6f}")
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cpu_env())
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / "run" / f"model{i}" / "train.log").is_file()
                      and loaded_from(log_of(tmp_path, i)) for i in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, "no exchange before the outage"
            time.sleep(0.5)
        s3_server.stop()
        down_at = [json_logs(log_of(tmp_path, i))[-1:] for i in (0, 1)]
        time.sleep(12)
        s3_server.start()
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.start() if s3_server._server is None else None
    assert proc.returncode == 0, out[-3000:]
    warnings, reloads = 0, 0
    for i in (0, 1):
        log = log_of(tmp_path, i)
        assert (tmp_path / "run" / f"model{i}" / "checkpoint_last.pt").is_file()
        assert "done training" in log
        assert json_logs(log)[-1]["num_updates"] > max(r[0]["num_updates"] for r in down_at if r)
        warned = re.findall(r"WARNING .*codistill: (cannot list|could not publish|could not renew"
                            r"|skipping peer snapshot)", log)
        assert warned, f"model {i} did not notice the outage"
        warnings += len(warned)
        after = log.split("answers again", 1)
        assert len(after) == 2, f"model {i} never saw the store come back"
        assert loaded_from(after[1]), f"model {i} did not read its peer after the outage"
        reloads += len(loaded_from(after[1]))
    record_figure("object store", "12 s outage mid-run (2 jobs, 100 s of training, interval 5)",
                  f"finished: yes, warnings: {warnings}, peer loads after it: {reloads}, "
                  f"updates when it began: {[r[0]['num_updates'] if r else 0 for r in down_at]}")


def test_a_live_models_id_or_a_disagreeing_job_fails_at_start_up(data_bin, tmp_path, s3_url):
    job = [tool("fairseq-train"), data_bin, *CODISTILL, "--task", "codistill_translation",
           "--codistill-dir", s3_url, "--max-update", "100000"]
    first = subprocess.Popen([str(c) for c in job + ["--codistill-id", "0", "--save-dir", tmp_path / "a"]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cpu_env())
    store = open_store(s3_url)
    try:
        deadline = time.monotonic() + 120
        while "lease.json" not in store.list("model0"):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        cases = {
            "--codistill-id": ["--codistill-id", "0"],
            "--codistill-num-models": ["--codistill-id", "1", "--codistill-num-models", "3"],
            "--codistill-topology": ["--codistill-id", "1", "--codistill-topology", "ring"],
        }
        for flag, args in cases.items():
            proc = run(job + args + ["--save-dir", tmp_path / flag.strip("-")], check=False, timeout=120)
            assert proc.returncode != 0
            error = re.search(r"ValueError: (.*)", proc.stderr)
            assert error and error.group(1).startswith(flag), proc.stderr[-2000:]
            assert not (tmp_path / flag.strip("-") / "checkpoint_last.pt").exists()
        assert first.poll() is None  # the live model trains on
    finally:
        first.kill()
        first.wait()
    record_figure("object store", "duplicate id, disagreeing num-models and topology",
                  f"{len(cases)} of {len(cases)} refused at start-up naming the flag")


def test_fairseq_train_starts_while_another_model_rewrites_its_lease(data_bin, tmp_path, s3_url):
    """The start-up race of leases, through fairseq-train: model 1 starts (and finishes)
    while model 0's lease is rewritten as fast as the store takes it."""
    from test_lease import RENEWER

    stop = tmp_path / "stop"
    renewer = subprocess.Popen([sys.executable, "-c", RENEWER, s3_url, str(stop)],
                               stdout=subprocess.PIPE, text=True, env=cpu_env())
    job = [tool("fairseq-train"), data_bin, *CODISTILL, "--task", "codistill_translation",
           "--codistill-dir", s3_url, "--codistill-id", "1", "--max-update", "3"]
    try:
        for attempt in range(START_UPS):
            run(job + ["--save-dir", tmp_path / f"m1-{attempt}"], timeout=120)
            assert (tmp_path / f"m1-{attempt}" / "checkpoint_last.pt").is_file()
    finally:
        stop.touch()
        out, _ = renewer.communicate(timeout=60)
    assert renewer.returncode == 0 and int(out) > START_UPS
    record_figure("object store", "fairseq-train start-ups of model 1 while model 0's lease is "
                  "rewritten in a tight loop", f"{START_UPS}/{START_UPS} trained ({int(out)} "
                  "rewrites meanwhile)")


def test_a_missing_bucket_fails_before_training_naming_the_flag(data_bin, tmp_path, s3_server):
    proc = run([tool("fairseq-train"), data_bin, *CODISTILL, "--task", "codistill_translation",
                "--codistill-dir", "s3://no-such-bucket/x",
                "--codistill-id", "0", "--save-dir", tmp_path / "m0", "--max-update", "10"],
               check=False, timeout=120)
    assert proc.returncode != 0
    assert "ValueError: --codistill-dir s3://no-such-bucket/x: the bucket or container does not exist" in proc.stderr
    assert not (tmp_path / "m0" / "checkpoint_last.pt").exists()
    launch = run([tool("fairseq-codistill-launch"), "--num-models", "2", "--codistill-dir",
                  "s3://no-such-bucket/x", "--save-dir", tmp_path / "run", "--", data_bin,
                  "--criterion", "codistill_ce"],
                 check=False, timeout=120)
    assert launch.returncode == 2 and "--codistill-dir s3://no-such-bucket/x" in launch.stderr
    record_figure("object store", "missing bucket", "fairseq-train and the launcher refuse it "
                  "before training, naming --codistill-dir")
