"""fairseq-codistill-launch: the jobs it builds and the progress it reads (no training)."""
import json
import subprocess
import sys

import pytest

from fairseq_codistill.tools import launch


def jobs_for(monkeypatch, visible, *flags):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    args, train_args = launch.parse_args(["--num-models", "3", "--codistill-dir", "x",
                                          "--save-dir", "s", "--fairseq-train", "/bin/true",
                                          *flags, "--", "DATA", "--arch", "transformer",
                                          "--criterion", "codistill_ce", "--max-update", "80"])
    return launch.build_jobs(args, train_args)


def test_share_gpus_puts_model_i_on_gpu_i_mod_n(monkeypatch):
    jobs = jobs_for(monkeypatch, "4,5", "--share-gpus")
    assert [j.env["CUDA_VISIBLE_DEVICES"] for j in jobs] == ["4", "5", "4"]
    assert all("--cpu" not in j.cmd and "--distributed-world-size" not in j.cmd for j in jobs)


def test_without_share_gpus_too_few_gpus_is_an_error(monkeypatch, capsys):
    try:
        jobs_for(monkeypatch, "0", "--gpus-per-model", "1")
    except SystemExit as e:
        assert "needs 3 GPUs, 1 visible" in str(e)
    else:
        raise AssertionError("3 models on 1 GPU were accepted without --share-gpus")


def test_progress_line_reads_fairseq_json_records(tmp_path, monkeypatch):
    job = jobs_for(monkeypatch, "", "--gpus-per-model", "0")[0]
    job.save_dir = tmp_path
    (tmp_path / "train.log").write_text(
        '2026-12-01 | INFO | train_inner | {"epoch": 2, "loss": "5.25", "num_updates": "40", "alpha": "0.11"}\n'
        '2026-12-01 | INFO | valid | {"epoch": 2, "valid_loss": "5.1", "valid_nll_loss": "4.875", "valid_num_updates": "40"}\n'
        '2026-12-01 | INFO | train_inner | {"epoch": 2, "loss": "5.2')  # a line still being written
    launcher = launch.Launcher(None, [job])
    launcher.read_progress(job)
    assert launcher.progress_line(job).endswith(
        "update 40/80 | epoch 2 | loss 5.25 | alpha 0.11 | valid nll 4.875")



def test_the_launcher_runs_and_writes_its_state_without_torch(tmp_path):
    """It only starts processes and writes JSON: importing torch would cost every launch
    seconds and tie it to the training environment."""
    code = ("import sys\n"
            "from fairseq_codistill.tools import launch\n"
            f"rc = launch.main(['--num-models', '2', '--codistill-dir', {str(tmp_path / 'x')!r}, "
            f"'--save-dir', {str(tmp_path / 'run')!r}, '--fairseq-train', '/bin/true', '--', 'DATA', "
            "'--criterion', 'codistill_ce'])\n"
            "print(rc, sorted(m for m in ('torch', 'fairseq', 'numpy') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stdout + proc.stderr
    state = json.loads((tmp_path / "run" / "launch.json").read_text())
    assert {k: v["status"] for k, v in state.items()} == {"model0": "done", "model1": "done"}


# -- faults and the lone all-reduce model: refused or built before any job starts -----------

def parse(*flags, models="2", exchange=("--codistill-dir", "x")):
    return launch.parse_args(["--num-models", models, *exchange, "--save-dir", "s",
                              "--fairseq-train", "/bin/true", *flags, "--", "DATA",
                              "--criterion", "codistill_ce", "--max-update", "80"])


BAD_FAULTS = [
    (["--slowdown", "2:2"], "--slowdown 2:2: '2' is not a model id in [0, --num-models=2)"),
    (["--slowdown=-1:2"], "--slowdown -1:2: '-1' is not a model id"),
    (["--slowdown", "1:0.5"], "--slowdown 1:0.5: the factor F must be a number >= 1 (got '0.5')"),
    (["--slowdown", "1:nan"], "--slowdown 1:nan: the factor F must be a number >= 1"),
    (["--slowdown", "1:inf"], "--slowdown 1:inf: the factor F must be a number >= 1"),
    (["--slowdown", "1:x"], "--slowdown 1:x: the factor F must be a number"),
    (["--slowdown", "1"], "--slowdown 1: expected I:F"),
    (["--slowdown", "1/:2"], "--slowdown 1/:2: expected I:F"),
    (["--slowdown", "0/1:2"], "--slowdown 0/1:2: rank 1 is not in [0, --ranks-per-model=1)"),
    (["--ranks-per-model", "2", "--slowdown", "0/2:2"], "--slowdown 0/2:2: rank 2 is not in [0, --ranks-per-model=2)"),
    (["--slowdown", "1:2", "--slowdown", "1:3"], "--slowdown 1:3: model 1 is slowed twice"),
    (["--ranks-per-model", "2", "--slowdown", "1:2", "--slowdown", "1/0:3"], "--slowdown 1/0:3: model 1 is slowed twice"),
    (["--preempt", "2:1:1"], "--preempt 2:1:1: '2' is not a model id in [0, --num-models=2)"),
    (["--preempt", "1:-1:3"], "--preempt 1:-1:3: AT (seconds after the launch) must be a number >= 0"),
    (["--preempt", "1:3:0"], "--preempt 1:3:0: FOR (seconds down) must be a number > 0 (got '0')"),
    (["--preempt", "1:3:-2"], "--preempt 1:3:-2: FOR (seconds down) must be a number > 0"),
    (["--preempt", "1:30"], "--preempt 1:30: expected I:AT:FOR"),
    (["--preempt", "1:30:20:5"], "--preempt 1:30:20:5: expected I:AT:FOR"),
    (["--preempt", "0:10:5", "--preempt", "0:12:1"],
     "--preempt 0:12:1 comes while model 0 is still down from --preempt 0:10:5 (until 15 s)"),
]


@pytest.mark.parametrize("flags, message", BAD_FAULTS, ids=[" ".join(f) for f, _ in BAD_FAULTS])
def test_bad_fault_values_are_refused_naming_the_flag(capsys, flags, message):
    with pytest.raises(SystemExit):
        parse(*flags)
    assert message in capsys.readouterr().err


def test_faults_are_parsed_per_model_and_rank(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args, train_args = parse("--ranks-per-model", "2", "--slowdown", "0/1:2.5", "--slowdown", "1:3",
                             "--preempt", "1:30:20", "--preempt", "1:50:5", "--preempt", "0:0:1")
    assert args.slowdown == {(0, 1): 2.5, (1, None): 3.0}
    assert args.preempt == {1: [(30.0, 20.0), (50.0, 5.0)], 0: [(0.0, 1.0)]}  # 1:50 may follow 1:30's 20 s
    jobs = launch.build_jobs(args, train_args)
    assert [j.slowdown for j in jobs] == [[1.0, 2.5], [3.0, 3.0]]
    assert [j.slowdown_text() for j in jobs] == ["rank 1 slowed 2.5x", "slowed 3x"]
    assert [len(j.preempts) for j in jobs] == [1, 2]


def test_one_rank_of_a_model_that_fairseq_spawns_on_gpus_cannot_be_slowed(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    args, train_args = parse("--ranks-per-model", "2", "--slowdown", "0/1:2")
    with pytest.raises(SystemExit, match="--slowdown I/R:F slows a rank this launcher starts"):
        launch.build_jobs(args, train_args)
    args, train_args = parse("--ranks-per-model", "2", "--slowdown", "0:2")  # the whole model: fine
    assert [j.slowdown for j in launch.build_jobs(args, train_args)] == [[2.0], [1.0]]


def test_one_model_on_two_ranks_is_all_reduce_without_an_exchange(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args, train_args = parse("--ranks-per-model", "2", models="1", exchange=())
    [job] = launch.build_jobs(args, train_args)
    assert job.ranks == 2 and "--codistill-dir" not in job.cmd
    assert launch.flag_value(job.cmd, "--codistill-num-models") == "1"


@pytest.mark.parametrize("flags, models, exchange, message", [
    ([], "1", (), "--num-models must be >= 2 (got 1), or 1 with --ranks-per-model >= 2"),
    (["--ranks-per-model", "2"], "1", ("--codistill-dir", "x"),
     "--codistill-dir x with --num-models 1: a lone model exchanges nothing"),
    ([], "2", (), "--codistill-dir is required with --num-models 2"),
    ([], "0", (), "--num-models must be >= 2 (got 0)"),
])
def test_num_models_and_codistill_dir_must_agree(capsys, flags, models, exchange, message):
    with pytest.raises(SystemExit):
        parse(*flags, models=models, exchange=exchange)
    assert message in capsys.readouterr().err


def test_progress_line_shows_slowdown_and_preemption(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args, train_args = parse("--slowdown", "1:2", "--preempt", "1:5:20")
    jobs = launch.build_jobs(args, train_args)
    launcher = launch.Launcher(args, jobs)
    jobs[0].returncode = 0
    jobs[1].down_until = launcher.now() + 20.4
    jobs[1].preemptions.append({"killed_at": 5.0, "restarted_at": None})
    assert launcher.progress_line(jobs[0]) == "model0 | done"
    assert launcher.progress_line(jobs[1]) == "model1 | preempted | slowed 2x | back in 20s"
    jobs[1].down_until = None
    assert launcher.progress_line(jobs[1]).endswith("| slowed 2x | preempted 1x")
