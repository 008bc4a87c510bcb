"""One model on several ranks: fairseq-codistill-launch --ranks-per-model 2 on a CPU starts
2 gloo ranks of each model itself; their swaps, weights, leases and failures."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import TINY_TRAIN, cpu_env, json_logs, record_figure, run, tool

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

INTERVAL = 5
CODISTILL = TINY_TRAIN + ["--criterion", "codistill_ce", "--codistill-interval", str(INTERVAL),
                         "--codistill-alpha", "1", "--codistill-wait-for-peers", "120",
                         "--codistill-max-lead", str(INTERVAL)]


def launcher(data_bin, run_dir, max_update, *flags):
    return [tool("fairseq-codistill-launch"), "--num-models", "2", "--ranks-per-model", "2",
            "--threads-per-model", "1", "--codistill-dir", run_dir / "x", "--save-dir", run_dir,
            "--progress-interval", "2", *flags, "--", data_bin, *CODISTILL, "--max-update", max_update]


def rank_log(run_dir, model, rank):
    return (run_dir / f"model{model}" / ("train.log" if rank == 0 else f"train-rank{rank}.log")).read_text()


def swaps(log, rank):
    """(peer, its update, our update) of every swap the rank logged."""
    return [tuple(map(int, m.groups())) for m in re.finditer(
        rf"loaded model (\d+) at its update (\d+) \(.*?\), in use from update (\d+) on rank {rank}\b", log)]


def final_crc(log, rank):
    found = re.findall(rf"rank {rank} of model \d+ ends at update \d+ with weights crc32 (\w+)", log)
    return found[-1] if found else None


def test_two_models_of_two_cpu_ranks_codistill(data_bin, tmp_path):
    run_dir = tmp_path / "run"
    run(launcher(data_bin, run_dir, 30), timeout=600)
    state = json.loads((run_dir / "launch.json").read_text())
    for i in (0, 1):
        logs = [rank_log(run_dir, i, r) for r in (0, 1)]
        assert "'distributed_world_size': 2" in logs[0] and "ddp_backend': 'legacy_ddp'" in logs[0]
        inner = json_logs(logs[0])
        assert inner[-1]["codistill_loss"] > 0 and inner[-1]["num_peers"] == 1  # the penalty at the end
        # every rank swaps in the same peer version at the same update
        assert swaps(logs[0], 0) and swaps(logs[0], 0) == swaps(logs[1], 1)
        # and ends with the same weights
        assert final_crc(logs[0], 0) is not None and final_crc(logs[0], 0) == final_crc(logs[1], 1)
        # only rank 0 holds the lease (and publishes: nothing on rank 1 about writing)
        lease = json.loads((run_dir / "x" / f"model{i}" / "lease.json").read_text())
        assert lease["pid"] == state[f"model{i}"]["pids"][0] != state[f"model{i}"]["pids"][1]
        assert lease["finished"] and "publish" not in logs[1]
    record_figure("ranks", "2 models x 2 CPU ranks (30 updates, interval 5)",
                  f"swaps identical on both ranks: yes ({len(swaps(logs[0], 0))} for model 1); "
                  "final weights identical: yes; lease and snapshots from rank 0 only")


def test_a_killed_rank_fails_its_model_which_restarts_while_the_other_trains_on(data_bin, tmp_path):
    run_dir = tmp_path / "run"
    cmd = launcher(data_bin, run_dir, 60, "--restart-failed") + ["--save-interval-updates", "5"]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cpu_env())
    try:
        deadline = time.monotonic() + 300
        # model 0 has saved a checkpoint, read its peer once and logged an update: an epoch
        # of the tiny corpus on 2 ranks is 4 updates, so its first checkpoint comes before the first
        # train_inner record (--log-interval 5)
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the kill"
            log0 = (run_dir / "model0" / "train.log").read_text() if (run_dir / "model0" / "train.log").exists() else ""
            if "Saved checkpoint" in log0 and swaps(log0, 0) and json_logs(log0):
                break
            time.sleep(0.2)
        victim = json.loads((run_dir / "launch.json").read_text())["model0"]["pids"][1]
        os.kill(victim, signal.SIGKILL)
        killed_at = json_logs(log0)[-1]["num_updates"]
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "model0 rank 1 died (signal SIGKILL); stopping its other ranks" in out
    state = json.loads((run_dir / "launch.json").read_text())
    assert state["model0"]["restarts"] == 1 and state["model1"]["restarts"] == 0
    first, again = state["model0"]["started_at"]  # when each attempt began: the report's clock
    assert 0 <= first < again and len(state["model1"]["started_at"]) == 1
    log0 = rank_log(run_dir, 0, 0)
    restarted = log0.split("fairseq-codistill-launch: restart 1 of model 0 rank 0", 1)[1]
    assert "Loaded checkpoint" in restarted and json_logs(restarted)[-1]["num_updates"] == 60
    assert final_crc(restarted, 0) == final_crc(rank_log(run_dir, 0, 1), 1)  # the new ranks agree
    log1 = rank_log(run_dir, 1, 0)
    assert "restart" not in log1 and json_logs(log1)[-1]["num_updates"] == 60
    record_figure("ranks", "rank 1 of model 0 SIGKILLed mid-run",
                  f"at update {killed_at:.0f}: its rank 0 stopped, the model restarted from "
                  "checkpoint_last.pt and finished; model 1 trained on without a restart")
