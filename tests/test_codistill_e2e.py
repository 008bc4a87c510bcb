"""Codistillation end to end: concurrent fairseq-train jobs exchanging snapshots."""
import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch

from conftest import TINY_TRAIN, binarize, cpu_env, json_logs, make_parallel_text, run, tool
from fairseq_codistill.fairseq_plugin.checkpoints import load_checkpoint_state

pytestmark = pytest.mark.e2e

INTERVAL = 5
CODISTILL = TINY_TRAIN + ["--criterion", "codistill_ce", "--codistill-interval", str(INTERVAL),
                         "--codistill-alpha", "1"]
# Jobs start seconds apart and run at different speeds on a busy machine: keep them
# within one interval of each other (stale-synchronous), so each reads the other often.
WAIT = ["--codistill-wait-for-peers", "60", "--codistill-max-lead", str(INTERVAL)]


def launch(data_bin, tmp_path, n, max_update=30, *extra, launcher_flags=(), check=True, timeout=400):
    return run([tool("fairseq-codistill-launch"), "--num-models", n, "--threads-per-model", "1",
                "--codistill-dir", tmp_path / "x", "--save-dir", tmp_path / "run",
                "--progress-interval", "1", *launcher_flags, "--",
                data_bin, *CODISTILL, *WAIT, "--max-update", max_update, *extra],
               check=check, timeout=timeout)


def log_of(tmp_path, i):
    return (tmp_path / "run" / f"model{i}" / "train.log").read_text()


def loaded_from(log):
    """(peer id, peer update) of every snapshot swapped in."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"loaded model (\d+) at its update (\d+)", log)]


def check_codistilled(log, peers):
    loads = loaded_from(log)
    for j in peers:
        assert len([p for p, _ in loads if p == j]) >= 2, f"model {j} read fewer than twice"
    inner = json_logs(log)
    with_peer = [r for r in inner if r.get("num_peers") not in (None, 0)]
    assert with_peer, "never trained with a peer"
    assert all(r["codistill_loss"] > 0 for r in with_peer)
    assert all("alpha" in r for r in inner)
    staleness = [float(r["peer_staleness"]) for r in inner if "peer_staleness" in r]
    # With --codistill-max-lead K a peer's snapshot is at most K behind when read, and it
    # is used for at most one more interval: at most 2K.
    assert staleness and max(staleness) <= 2 * INTERVAL
    assert float(inner[-1]["param_dist"]) > 0
    assert int(inner[-1]["codistill_bytes"]) > 0


def test_two_models_via_the_launcher(data_bin, tmp_path):
    proc = launch(data_bin, tmp_path, 2, 30, "--codistill-alpha-schedule", "exponential")
    assert "model0 finished" in proc.stdout and "model1 finished" in proc.stdout
    for i in (0, 1):
        check_codistilled(log_of(tmp_path, i), peers=[1 - i])
        assert (tmp_path / "run" / f"model{i}" / "checkpoint_last.pt").is_file()
    state = json.loads((tmp_path / "run" / "launch.json").read_text())
    assert {k: v["status"] for k, v in state.items()} == {"model0": "done", "model1": "done"}
    # one --seed for both jobs, yet each model has its own weights and batches: model i
    # trains with seed 1 + i, so their losses differ from the first logged interval on
    first = [json_logs(log_of(tmp_path, i))[0] for i in (0, 1)]
    assert "model 1 trains with --seed 2" in log_of(tmp_path, 1)
    assert first[0]["num_updates"] == first[1]["num_updates"] and first[0]["loss"] != first[1]["loss"]
    # the exchange directory holds the newest two snapshots of each model and its lease,
    # marked finished by the job's normal end
    for i in (0, 1):
        assert sorted(os.listdir(tmp_path / "x" / f"model{i}")) == [
            "lease.json", "snapshot-0000000020.cds", "snapshot-0000000025.cds"]
        lease = json.loads((tmp_path / "x" / f"model{i}" / "lease.json").read_text())
        assert lease["finished"] and lease["num_models"] == 2 and lease["num_updates"] == 25


def test_three_models_all_to_all_and_ring(data_bin, tmp_path):
    launch(data_bin, tmp_path / "all", 3, 20)
    for i in range(3):
        check_codistilled(log_of(tmp_path / "all", i), peers=[j for j in range(3) if j != i])
    # A ring bounds only each model's lead over the one it reads: model 0 may be 3K ahead
    # of a late-starting model 2, which then reads it at start-up (<= 3K) and, waiting at
    # update 25, again (>= 20): twice only if the run is longer than 4K.
    launch(data_bin, tmp_path / "ring", 3, 30, "--codistill-topology", "ring")
    for i in range(3):
        log = log_of(tmp_path / "ring", i)
        check_codistilled(log, peers=[(i + 1) % 3])
        assert {p for p, _ in loaded_from(log)} == {(i + 1) % 3}


def test_resume_keeps_alpha_and_peer_state(data_bin, tmp_path):
    flags = ["--codistill-alpha-schedule", "exponential", "--codistill-gamma", "1.5"]
    launch(data_bin, tmp_path, 2, 20, *flags)
    before = load_checkpoint_state(tmp_path / "run" / "model0" / "checkpoint_last.pt",
                                   keys=["task_state"])["task_state"]["codistill"]
    assert before["peer_versions"]["1"] >= 10 and before["num_loads"] >= 2
    launch(data_bin, tmp_path, 2, 30, *flags)
    log = log_of(tmp_path, 0).split("restart", 1)[-1]
    resumed = log.split("fairseq-codistill-launch: start", 2)[-1]  # the second run
    assert "Loaded checkpoint" in resumed and "resumed task state" in resumed
    records = json_logs(resumed)
    assert records[0]["num_updates"] > 20  # continued, not restarted
    for r in json_logs(resumed, "train"):
        assert r["alpha"] == pytest.approx(1.5 ** (r["epoch"] - 1), rel=1e-3)
    # peers are re-read at start-up, before the first exchange interval
    first_load = resumed.index("loaded model 1")
    assert first_load < resumed.index('"num_updates": "25"')
    after = load_checkpoint_state(tmp_path / "run" / "model0" / "checkpoint_last.pt",
                                  keys=["task_state"])["task_state"]["codistill"]
    assert after["num_loads"] > before["num_loads"] and after["bytes_read"] > before["bytes_read"]


def test_garbage_snapshot_is_skipped_and_a_lone_model_trains(data_bin, tmp_path):
    peer_dir = tmp_path / "x" / "model1"
    peer_dir.mkdir(parents=True)
    (peer_dir / "snapshot-0000000005.cds").write_bytes(os.urandom(5000))
    (peer_dir / ".tmp-stray").write_bytes(b"half")
    proc = run([tool("fairseq-train"), data_bin, *CODISTILL, "--max-update", "15",
                "--task", "codistill_translation", "--codistill-dir", tmp_path / "x",
                "--codistill-id", "0", "--save-dir", tmp_path / "m0"])
    log = proc.stdout + proc.stderr
    assert log.count("skipping peer snapshot") == 1 and "no end marker" in log
    assert {r["num_peers"] for r in json_logs(log)} == {0}
    assert (tmp_path / "m0" / "checkpoint_last.pt").is_file()


def test_heterogeneous_peer_is_built_from_its_snapshot_and_vocab_mismatch_is_rejected(
        data_bin, tmp_path, tmp_path_factory):
    # model 1 is wider and shallower than model 0: allowed, built from its own config
    wide = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "48",
            "--decoder-embed-dim", "48"]
    common = [data_bin, *CODISTILL, *WAIT, "--max-update", "20", "--task", "codistill_translation",
              "--codistill-dir", tmp_path / "x"]
    p0 = subprocess.Popen([tool("fairseq-train"), *common, "--codistill-id", "0", "--save-dir",
                           tmp_path / "m0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=cpu_env())
    run([tool("fairseq-train"), *common, *wide, "--codistill-id", "1", "--save-dir", tmp_path / "m1"])
    log0 = p0.communicate(timeout=300)[0]
    assert p0.returncode == 0
    assert any(j == 1 for j, _ in loaded_from(log0))
    assert any(r["codistill_loss"] > 0 for r in json_logs(log0) if r["num_peers"] != 0)

    # a model trained on another dictionary publishes into the same directory
    other = tmp_path_factory.mktemp("other")
    make_parallel_text(other / "text", seed=7)
    (other / "text" / "train.tgt").write_text("ONLY A FEW WORDS\n" * 400)  # another vocabulary
    other_bin = binarize(other / "text", other / "bin")
    run([tool("fairseq-train"), other_bin, *CODISTILL, "--max-update", "10",
         "--task", "codistill_translation", "--codistill-dir", tmp_path / "y",
         "--codistill-id", "1", "--save-dir", tmp_path / "o1"])
    proc = run([tool("fairseq-train"), data_bin, *CODISTILL, "--max-update", "6",
                "--task", "codistill_translation", "--codistill-dir", tmp_path / "y",
                "--codistill-id", "0", "--save-dir", tmp_path / "o0"])
    log = proc.stdout + proc.stderr
    assert "codistilled models must share one dictionary" in log
    assert {r["num_peers"] for r in json_logs(log)} == {0}


def launch_and_kill_model1(data_bin, tmp_path, launcher_flags, train_flags):
    """Start two jobs with the launcher, SIGKILL model 1 once it has a checkpoint, and
    return the launcher's exit status and output."""
    cmd = [tool("fairseq-codistill-launch"), "--num-models", "2", "--threads-per-model", "1",
           "--codistill-dir", tmp_path / "x", "--save-dir", tmp_path / "run", *launcher_flags,
           "--", data_bin, *CODISTILL, "--save-interval-updates", "10", *train_flags]
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=cpu_env())
    victim = tmp_path / "run" / "model1" / "checkpoint_last.pt"
    deadline = time.monotonic() + 200
    while not victim.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victim.exists()
    pid = json.loads((tmp_path / "run" / "launch.json").read_text())["model1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    out = launcher.communicate(timeout=300)[0]
    return launcher.returncode, out


def test_killing_one_job_leaves_the_other_finishing(data_bin, tmp_path):
    code, out = launch_and_kill_model1(data_bin, tmp_path, [], [
        "--max-update", "60", "--codistill-max-lead", str(INTERVAL), "--codistill-wait-for-peers", "15"])
    assert code == 1
    assert "model1 died (signal SIGKILL)" in out and "model0 finished" in out
    log0 = log_of(tmp_path, 0)
    assert json_logs(log0)[-1]["num_updates"] == 60
    # model 0 waited for the dead peer once, then went on without waiting again
    assert log0.count("going on without waiting for them") == 1
    for i in (0, 1):  # both jobs' checkpoints are intact and loadable
        state = load_checkpoint_state(tmp_path / "run" / f"model{i}" / "checkpoint_last.pt",
                                      keys=["model", "optimizer_history"])
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_restart_failed_resumes_the_killed_job(data_bin, tmp_path):
    code, out = launch_and_kill_model1(data_bin, tmp_path, ["--restart-failed"],
                                       [*WAIT, "--max-update", "50"])
    assert code == 0, out
    assert "model1 died (signal SIGKILL); restarting" in out
    log1 = log_of(tmp_path, 1)
    restarted = log1.split("fairseq-codistill-launch: restart 1", 1)[1]
    resumed_at = int(re.search(r"Loaded checkpoint .* @ (\d+) updates", restarted).group(1))
    assert resumed_at > 0  # from its checkpoint_last.pt, not from scratch
    assert json_logs(restarted)[0]["num_updates"] == (resumed_at // 5 + 1) * 5
    assert json_logs(restarted)[-1]["num_updates"] == 50
    # and model 0 picked model 1 up again after its restart
    log0 = log_of(tmp_path, 0)
    assert any(j == 1 and u > 10 for j, u in loaded_from(log0))
