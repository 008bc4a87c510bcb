"""recipes/slurm/codistill.sbatch with stand-ins for srun and scontrol that record their
arguments: one job step per model, each on its own nodes, with its own id and port."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import PLUGIN, REPO

SBATCH = REPO / "recipes" / "slurm" / "codistill.sbatch"


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    scripts = {
        "scontrol": 'printf "%s\\n" node1 node2 node3 node4\n',
        # record the arguments; model 1's step fails, to check the others are not stopped
        "srun": f'echo "$*" >> "{calls}"\ncase "$*" in *"--codistill-id 1 "*) exit 3;; esac\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[1-4]",
           "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_ID": "1234", "PLUGIN": PLUGIN,
           "DATA": str(tmp_path / "data"), "SAVE_DIR": str(tmp_path / "run")}
    return env, calls


def test_one_step_per_model_on_its_own_nodes(fake_slurm):
    env, calls = fake_slurm
    proc = subprocess.run(["bash", SBATCH, "--arch", "transformer", "--max-update", "10"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1  # model 1's step failed ...
    assert "model0 finished" in proc.stdout and "model1 died (exit 3)" in proc.stderr
    steps = sorted(Path(calls).read_text().splitlines(), key=lambda c: "--codistill-id 1" in c)
    assert len(steps) == 2  # ... and model 0's step ran all the same
    run_dir = env["SAVE_DIR"]
    for i, (step, nodes) in enumerate(zip(steps, ["node1,node2", "node3,node4"])):
        assert f"--nodes=2 --nodelist={nodes} --ntasks-per-node=8" in step
        assert f"--codistill-id {i} --codistill-num-models 2" in step
        assert f"--save-dir {run_dir}/model{i}" in step
        assert f"--codistill-dir {run_dir}/exchange" in step
        assert f"--distributed-port {21234 + i}" in step  # 20000 + job id 1234, one per model
        assert step.endswith("--arch transformer --max-update 10")


def test_too_few_nodes_is_a_clear_error(fake_slurm):
    env, calls = fake_slurm
    env["NUM_MODELS"] = "5"
    proc = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "5 models (MODELS='0 1 2 3 4') x NODES_PER_MODEL=0 needs at least 5 nodes" in proc.stderr
    assert not Path(calls).exists()


def test_one_cluster_runs_its_share_of_the_models_through_a_bucket(fake_slurm):
    """Two clusters, one bucket: this allocation trains model 0 of 2; cluster B runs
    MODELS=1 with the same NUM_MODELS and CODISTILL_DIR."""
    env, calls = fake_slurm
    env.update(MODELS="0", CODISTILL_DIR="s3://bucket/run1")
    proc = subprocess.run(["bash", SBATCH, "--max-update", "10"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (step,) = Path(calls).read_text().splitlines()
    assert "--nodes=4 --nodelist=node1,node2,node3,node4" in step  # all nodes for one model
    assert "--codistill-dir s3://bucket/run1 --codistill-id 0 --codistill-num-models 2" in step
    assert not Path("s3:").exists()  # no local directory made for a URL
    env["MODELS"] = "2"
    proc = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "MODELS='2': ids must be in 0..1" in proc.stderr
