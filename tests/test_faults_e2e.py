"""fairseq-codistill-launch's faults: --slowdown (a straggler, by SIGSTOP/SIGCONT) and
--preempt (a model killed and given back). First on stand-in processes that only count
(the duty cycle itself, no training), then on tiny codistilled and all-reduce runs."""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from conftest import TINY_TRAIN, cpu_env, json_logs, record_figure, run, tool

pytestmark = pytest.mark.reliability

# A stand-in for fairseq-train: busy for --seconds of wall time, then it appends to
# SAVE_DIR/work-rank{R}.jsonl how far it counted and the share of that wall time it ran.
STAND_IN = '''#!{python}
import json, sys, time
args = sys.argv[1:]
save, seconds = args[args.index("--save-dir") + 1], float(args[args.index("--seconds") + 1])
rank = args[args.index("--distributed-rank") + 1] if "--distributed-rank" in args else "0"
start = last = time.monotonic()
count, ran = 0, 0.0
while last - start < seconds:
    count += 1
    now = time.monotonic()
    if now - last < 0.05:  # longer gaps are no scheduler's time slice: it was held stopped
        ran += now - last
    last = now
with open(f"{{save}}/work-rank{{rank}}.jsonl", "a") as f:
    f.write(json.dumps({{"count": count, "ran": ran / (last - start)}}) + "\\n")
'''


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "fake-fairseq-train"
    path.write_text(STAND_IN.format(python=sys.executable))
    path.chmod(0o755)
    return path


def stand_in_launch(stand_in, run_dir, seconds, *flags):
    return [tool("fairseq-codistill-launch"), "--num-models", "2", "--codistill-dir", run_dir / "x",
            "--save-dir", run_dir, "--fairseq-train", stand_in, "--progress-interval", "1", *flags,
            "--", "DATA", "--criterion", "codistill_ce", "--seconds", str(seconds)]


def launch_env():
    return {**cpu_env(), "CUDA_VISIBLE_DEVICES": ""}


def work(run_dir, model, rank=0):
    path = run_dir / f"model{model}" / f"work-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def stopped(pids):
    """Those of ``pids`` that are alive and stopped (state T in /proc/PID/stat)."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state in ("T", "t"):
            found.append(pid)
    return found


def test_slowdown_2_halves_the_work_of_a_busy_process(stand_in, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(stand_in_launch(stand_in, run_dir, 3, "--slowdown", "1:2"), timeout=60, env=launch_env())
    free, slowed = work(run_dir, 0)[0], work(run_dir, 1)[0]
    ratio = slowed["count"] / free["count"]
    record_figure("faults", "--slowdown 1:2 on a busy loop, 3 s", f"counted {ratio:.2f} as far as "
                  f"model 0; ran {slowed['ran']:.2f} of its wall time (model 0: {free['ran']:.2f})")
    # Held half of every cycle, it runs half its wall time. It counts about half as far, or
    # less on a busy machine: while it is held, model 0 gets the core it leaves.
    assert 0.35 <= slowed["ran"] <= 0.65 and free["ran"] > 0.9
    assert 0.2 <= ratio <= 0.65
    state = json.loads((run_dir / "launch.json").read_text())
    assert [state[m]["slowdown"] for m in ("model0", "model1")] == [1.0, 2.0]
    assert state["model0"]["paused_seconds"] == 0 and 1.0 <= state["model1"]["paused_seconds"] <= 2.0
    assert "model1 | running | slowed 2x" in proc.stdout
    assert not stopped(state["model1"]["pids"])


def test_an_interrupted_launcher_leaves_no_process_stopped(stand_in, tmp_path):
    """SIGTERM to the launcher: every rank, slowed ones too, gets SIGINT and ends (a
    process left stopped would hold that SIGINT forever). The launcher starts as a script's
    background job does, with SIGINT ignored: its jobs must not inherit that, or they sit
    out the SIGINT until the SIGKILL 30 s later."""
    run_dir = tmp_path / "run"
    cmd = stand_in_launch(stand_in, run_dir, 60, "--ranks-per-model", "2", "--slowdown", "0/1:3",
                          "--slowdown", "1:2")
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=launch_env(),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        time.sleep(3)  # a dozen duty cycles
        state = json.loads((run_dir / "launch.json").read_text())
        pids = [pid for m in ("model0", "model1") for pid in state[m]["pids"]]
        assert len(pids) == 4 and stopped(pids) != pids  # not all held at once
        launcher.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out = launcher.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, out
    assert took < 10, f"the jobs took {took:.0f} s to stop: SIGKILLed after ignoring SIGINT?"
    assert "model0 | running | rank 1 slowed 3x" in out and "model1 | running | slowed 2x" in out
    # the launcher waited for every rank to end: none is left, stopped or not
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    state = json.loads((run_dir / "launch.json").read_text())
    assert state["model0"]["slowed_ranks"] == [1] and state["model1"]["slowed_ranks"] == [0, 1]
    assert state["model0"]["paused_seconds"] > 1 and state["model1"]["paused_seconds"] > 1
    assert [state[m]["status"] for m in ("model0", "model1")] == ["died (signal SIGINT)"] * 2


def test_a_preempted_stand_in_comes_back_slowed_and_a_finished_one_is_left_alone(stand_in, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(stand_in_launch(stand_in, run_dir, 3, "--slowdown", "0:2", "--preempt", "0:1:1",
                               "--preempt", "1:30:1"), timeout=60, env=launch_env())
    out = proc.stdout
    assert re.search(r"model0 preempted at [12]s: killed \(SIGKILL\); back in 1s", out), out
    assert "model0 restarted after preemption, from scratch: it had saved no checkpoint_last.pt" in out
    assert "model1 done before its preemption at 30s: nothing to preempt" in out
    state = json.loads((run_dir / "launch.json").read_text())
    [preemption] = state["model0"]["preemptions"]
    assert 1 <= preemption["killed_at"] < 3 and preemption["restarted_at"] - preemption["killed_at"] >= 1
    assert state["model0"]["status"] == "done" and state["model0"]["restarts"] == 0
    assert state["model1"]["preemptions"] == []
    # the killed attempt wrote nothing; the new one, a new pid, was slowed as the first was
    [second] = work(run_dir, 0)
    assert 0.35 <= second["ran"] <= 0.65
    log = (run_dir / "model0" / "train.log").read_text()
    assert "=== fairseq-codistill-launch: restart after preemption 1 of model 0" in log


# -- tiny fairseq runs -------------------------------------------------------------------------

CODISTILL = TINY_TRAIN + ["--criterion", "codistill_ce", "--codistill-interval", "5",
                         "--codistill-max-lead", "0"]  # model 0 never waits for the slow one


def launch_cmd(data_bin, run_dir, *flags, train=()):
    return [tool("fairseq-codistill-launch"), "--num-models", "2", "--threads-per-model", "1",
            "--codistill-dir", run_dir / "x", "--save-dir", run_dir, "--progress-interval", "2",
            *flags, "--", data_bin, *CODISTILL, *train]


def log_of(run_dir, model, rank=0):
    name = "train.log" if rank == 0 else f"train-rank{rank}.log"
    path = run_dir / f"model{model}" / name
    return path.read_text() if path.exists() else ""


@pytest.mark.e2e
def test_slowdown_3_cuts_a_codistilled_models_update_rate(data_bin, tmp_path):
    run_dir = tmp_path / "run"
    cmd = launch_cmd(data_bin, run_dir, "--slowdown", "1:3",
                     train=["--max-update", "100000", "--log-interval", "2", "--no-save",
                            "--disable-validation"])
    launcher = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=cpu_env())
    started = time.monotonic()
    try:
        # the slow model's rate is read from its records: 6 of them after the first
        deadline = started + 120
        while len(json_logs(log_of(run_dir, 1))) < 7:
            assert launcher.poll() is None and time.monotonic() < deadline, "model 1 logged too little"
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        # the records of the slowed run only: the launcher continues a slowed job before it
        # signals it, so what a model logs while it stops is at full speed
        texts = [log_of(run_dir, i) for i in (0, 1)]
        launcher.send_signal(signal.SIGTERM)
        out = launcher.communicate(timeout=60)[0]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # fairseq's ups: updates per second of wall time (stopped time included) between records,
    # from those where both models train with the penalty (a peer's forward pass and its loads
    # every 5 updates cost more than training alone, as model 0 does until model 1 publishes).
    # Every record covers --log-interval updates, so their harmonic mean is the updates over the
    # seconds they took: a median would miss the pauses on a machine fast enough to log twice
    # within one 0.08 s running slice of the duty cycle.
    ups = [statistics.harmonic_mean([r["ups"] for r in json_logs(text)[1:] if r["num_peers"] == 1])
           for text in texts]
    state = json.loads((run_dir / "launch.json").read_text())
    paused = state["model1"]["paused_seconds"]
    record_figure("faults", "--slowdown 1:3, tiny codistilled pair",
                  f"ups {ups[0]:.1f} vs {ups[1]:.1f} (ratio {ups[1] / ups[0]:.2f}); model 1 "
                  f"paused {paused:.1f} of {elapsed:.1f} s")
    assert ups[1] <= 0.5 * ups[0], ups
    assert state["model0"]["paused_seconds"] == 0 and 0.5 <= paused / elapsed <= 0.8
    assert "slowed 3x" in out and not stopped(state["model1"]["pids"])


@pytest.mark.e2e
def test_a_preempted_model_resumes_from_its_checkpoint_and_finishes(data_bin, tmp_path):
    run_dir = tmp_path / "run"
    # model 1 trains long enough to be running at 15 s (its first checkpoints, every epoch
    # of 7 updates, come within seconds of its start) and is back 2 s after the kill
    proc = run(launch_cmd(data_bin, run_dir, "--preempt", "1:15:2",
                          "--model-args", "1", "--max-update 500",
                          train=["--max-update", "60", "--disable-validation", "--no-epoch-checkpoints"]),
               timeout=300)
    out = proc.stdout
    assert re.search(r"model1 preempted at 1[5-7]s: killed \(SIGKILL\); back in 2s", out), out
    assert "model1 restarted after preemption, resuming from its checkpoint_last.pt" in out
    state = json.loads((run_dir / "launch.json").read_text())
    [preemption] = state["model1"]["preemptions"]
    assert preemption["restarted_at"] - preemption["killed_at"] >= 2
    assert state["model1"]["started_at"][1] == pytest.approx(preemption["restarted_at"], abs=0.2)
    assert state["model1"]["restarts"] == 0 and state["model1"]["status"] == "done"
    before, after = log_of(run_dir, 1).split("=== fairseq-codistill-launch: restart after preemption 1")
    loaded = re.search(r"Loaded checkpoint \S*checkpoint_last.pt \(epoch \d+ @ (\d+) updates\)", after)
    assert loaded and 0 < int(loaded.group(1)) <= json_logs(before)[-1]["num_updates"] + 7
    assert json_logs(after)[-1]["num_updates"] == 500
    log0 = log_of(run_dir, 0)
    assert "restart" not in log0.split("\n", 1)[1] and json_logs(log0)[-1]["num_updates"] == 60
    record_figure("faults", "--preempt 1:15:2, tiny codistilled pair",
                  f"killed at {preemption['killed_at']} s, back at {preemption['restarted_at']} s, "
                  f"resumed at update {loaded.group(1)}, finished at 500; model 0 finished undisturbed")


@pytest.mark.e2e
def test_one_model_on_two_ranks_with_one_rank_slowed(data_bin, tmp_path):
    """The all-reduce baseline as one 2-rank job, a straggler rank included."""
    run_dir = tmp_path / "run"
    proc = run([tool("fairseq-codistill-launch"), "--num-models", "1", "--ranks-per-model", "2",
                "--threads-per-model", "1", "--save-dir", run_dir, "--slowdown", "0/1:2",
                "--progress-interval", "2", "--", data_bin, *TINY_TRAIN, "--criterion", "cross_entropy",
                "--max-update", "20"], timeout=300)
    assert "started 1 job (one model on 2 ranks, all-reduce, no exchange)" in proc.stdout
    assert "rank 1 slowed 2x" in proc.stdout
    log = log_of(run_dir, 0)
    assert "'distributed_world_size': 2" in log and "training alone (no peers)" in log
    assert json_logs(log)[-1]["num_updates"] == 20
    state = json.loads((run_dir / "launch.json").read_text())["model0"]
    assert "--codistill-dir" not in state["cmd"] and state["status"] == "done"
    assert state["slowed_ranks"] == [1] and state["slowdown"] == 2 and state["paused_seconds"] > 1
