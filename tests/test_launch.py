"""fairseq-codistill-launch: the jobs it builds and the progress it reads (no training)."""
import json
import subprocess
import sys

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
