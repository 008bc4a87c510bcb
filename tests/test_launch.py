"""fairseq-codistill-launch: the jobs it builds and the progress it reads (no training)."""
from fairseq_codistill import launch


def jobs_for(monkeypatch, visible, *flags):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    args, train_args = launch.parse_args(["--num-models", "3", "--codistill-dir", "x",
                                          "--save-dir", "s", "--fairseq-train", "/bin/true",
                                          *flags, "--", "DATA", "--arch", "transformer",
                                          "--max-update", "80"])
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

