"""The vision trainer end to end on the CPU: synthetic images, the small built-in
ResNets, codistillation through the snapshot exchange, resume, and flag errors."""
import json
import subprocess
import time

import pytest
import torch

from conftest import cpu_env, run, tool
from fairseq_codistill.exchange.snapshot import cast_state_dict, list_snapshots, read_snapshot, write_snapshot
from fairseq_codistill.vision.codistill import codistillation, model_meta
from fairseq_codistill.vision.models import build_model
from fairseq_codistill.vision.options import parse_args
from fairseq_codistill.vision.train import Compute, main, update

# 128 images of 16 px in 10 classes, batch 8: 16 updates per epoch in one process.
TINY = ["--dummy", "--image-size", "16", "--num-classes", "10", "--dummy-train-size", "128",
        "--dummy-val-size", "32", "--batch-size", "8", "--workers", "0", "--print-freq", "0",
        "--cpu", "--warmup-epochs", "0", "--lr-milestones", "1"]
UPDATES_PER_EPOCH = 16
# alpha = 2^(epoch - 1): 1, 2, 4 -- a restarted schedule would show 1 again.
CODISTILL = ["--codistill-interval", "4", "--codistill-alpha-schedule", "exponential",
             "--codistill-gamma", "2"]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs on one core, like the subprocesses (OMP_NUM_THREADS=1): on a busy
    machine, extra threads wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def metrics(save_dir):
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def vision(*args, nproc=1):
    """The console script, or torchrun with ``nproc`` CPU processes (gloo)."""
    if nproc == 1:
        return [tool("fairseq-codistill-vision"), *args]
    return [tool("torchrun"), "--standalone", "--nproc-per-node", nproc, "-m",
            "fairseq_codistill.vision", *args]


def wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None or predicate(), f"exited {proc.returncode} first:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_two_models_codistill_through_snapshots_and_resume(tmp_path):
    """Model 1 (resnet14, one process) and model 0 (resnet8, torchrun with 2 gloo ranks)
    codistill; model 0 starts once model 1 has published, so each sees the other's
    snapshots whatever the machine's speed: model 0 from its first exchange, model 1
    when it resumes for a third epoch."""
    x = tmp_path / "x"
    m0, m1 = tmp_path / "m0", tmp_path / "m1"
    model1 = ["--arch", "resnet14", "--codistill-dir", x, "--codistill-id", "1", "--save-dir", m1]
    first = subprocess.Popen([str(a) for a in vision(*TINY, *CODISTILL, *model1, "--epochs", "2")],
                             env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list_snapshots(x, 1), 120, first)
        run(vision(*TINY, *CODISTILL, "--arch", "resnet8", "--codistill-dir", x, "--codistill-id", "0",
                   "--save-dir", m0, "--epochs", "2", nproc=2), timeout=180)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err[-3000:]
    finally:
        first.kill()
    run(vision(*TINY, *CODISTILL, *model1, "--epochs", "3"), timeout=120)  # resumes

    log0, log1 = metrics(m0), metrics(m1)
    assert [r["epoch"] for r in log0] == [1, 2] and [r["epoch"] for r in log1] == [1, 2, 3]
    # Model 0: 2 ranks x 8 images, 8 updates per epoch; model 1 continued, not restarted.
    assert [r["updates"] for r in log0] == [8, 16]
    assert [r["updates"] for r in log1] == [16, 32, 48]
    assert [r["alpha"] for r in log0] == [1.0, 2.0] and [r["alpha"] for r in log1] == [1.0, 2.0, 4.0]
    # The LR of each epoch's last update: 0.1 * 8/256 = 0.003125 for model 1, x0.1 once
    # one epoch is done; model 0 has 2 x 8 images: 0.00625, then 0.000625.
    assert [round(r["lr"], 9) for r in log1] == [0.003125, 0.0003125, 0.0003125]
    assert [round(r["lr"], 9) for r in log0] == [0.00625, 0.000625]
    for record in log0 + log1[2:]:
        assert record["codistill_loss"] > 0, record
        assert record["num_peers"] == 1 and record["codistill_bytes"] > 0
    for record in log0 + log1:
        assert record["param_dist"] > 0 and 0 <= record["val_acc1"] <= record["val_acc5"] <= 100
    # Each published every 4 updates; the newest two are kept.
    assert [s.num_updates for s in list_snapshots(x, 0)] == [12, 8]
    assert [s.num_updates for s in list_snapshots(x, 1)] == [44, 40]


@pytest.mark.timeout(120)
def test_resume_continues_exactly(tmp_path):
    """2 epochs, then a third from checkpoint_last.pt, equals 3 epochs in one go."""
    flags = TINY + ["--arch", "resnet8", "--codistill-dir", str(tmp_path / "x"), "--codistill-id", "0",
                    *CODISTILL]  # no peer ever publishes: the schedules run, the loss is plain
    main(flags + ["--save-dir", str(tmp_path / "once"), "--epochs", "3"])
    main(flags + ["--save-dir", str(tmp_path / "twice"), "--epochs", "2"])
    main(flags + ["--save-dir", str(tmp_path / "twice"), "--epochs", "3"])
    once, twice = metrics(tmp_path / "once"), metrics(tmp_path / "twice")
    assert [r["epoch"] for r in twice] == [1, 2, 3]
    assert [r["updates"] for r in twice] == [16, 32, 48]
    assert [r["alpha"] for r in twice] == [1.0, 2.0, 4.0]
    assert all(r["codistill_loss"] is None for r in twice)
    for key in ("train_loss", "val_loss", "val_acc1", "param_dist", "lr", "wd"):
        assert twice[2][key] == pytest.approx(once[2][key], rel=1e-5), key


@pytest.mark.timeout(60)
def test_resume_with_other_flags_names_the_flag(tmp_path, capsys):
    flags = TINY + ["--lr-milestones", "", "--epochs", "2", "--save-dir", str(tmp_path)]
    main(flags + ["--arch", "resnet8", "--epochs", "1"])
    with pytest.raises(SystemExit) as exit_:
        main(flags + ["--arch", "resnet14"])
    assert exit_.value.code == 2
    assert "--arch is resnet14 but" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(flags + ["--arch", "resnet8", "--batch-size", "16"])
    assert "--batch-size is 16 but" in capsys.readouterr().err
    assert [r["epoch"] for r in metrics(tmp_path)] == [1]  # nothing more was trained


def test_evaluate_builds_the_model_from_the_checkpoint(tmp_path, capsys):
    main(TINY + ["--arch", "resnet14", "--epochs", "2", "--save-dir", str(tmp_path)])
    capsys.readouterr()
    # No --arch (the default, resnet50, is not even buildable here): the checkpoint's.
    main(TINY[:-2] + ["--evaluate", str(tmp_path / "checkpoint_last.pt")])
    result = json.loads(capsys.readouterr().out)
    assert (result["arch"], result["num_classes"]) == ("resnet14", 10)
    last = metrics(tmp_path)[-1]
    for key in ("val_loss", "val_acc1", "val_acc5"):
        assert result[key] == pytest.approx(last[key], rel=1e-6), key


def test_the_trainer_never_imports_fairseq():
    code = ("import sys, fairseq_codistill.vision.train; "
            "assert 'fairseq' not in sys.modules, 'fairseq was imported'")
    run([tool("python"), "-c", code], timeout=60)


@pytest.mark.timeout(60)
def test_train_fraction_trains_k_times_the_epochs(tmp_path):
    # 1/2 of 128 images = 64 = 8 updates per epoch, for 2 x 1 epochs; the milestone at
    # full-data epoch 0.5 moves to subset epoch 1: LR 0.003125 then 0.0003125.
    main(TINY[:-2] + ["--lr-milestones", "0.5", "--arch", "resnet8", "--train-fraction", "1/2",
                      "--epochs", "1", "--save-dir", str(tmp_path)])
    log = metrics(tmp_path)
    assert [(r["epoch"], r["updates"]) for r in log] == [(1, 8), (2, 16)]
    assert [round(r["lr"], 9) for r in log] == [0.003125, 0.0003125]
    assert all(r["alpha"] == 0.0 and r["codistill_loss"] is None for r in log)  # all-reduce only


@pytest.mark.timeout(60)
def test_peer_with_other_classes_is_rejected(tmp_path, caplog):
    """A snapshot predicting 5 classes is skipped (logged), never distilled from."""
    x = tmp_path / "x"
    write_snapshot(x, 1, 4, {"fc.weight": torch.zeros(5, 64)},
                   meta={"arch": "resnet8", "num_classes": 5}, dtype="fp32")
    main(TINY + ["--lr-milestones", "", "--arch", "resnet8", "--epochs", "1", "--save-dir", str(tmp_path / "m0"),
                 "--codistill-dir", str(x), "--codistill-id", "0", "--codistill-interval", "4"])
    (record,) = metrics(tmp_path / "m0")
    assert record["codistill_loss"] is None and record["num_peers"] == 0
    assert "predicts 5 classes but this model 10" in caplog.text


@pytest.mark.parametrize("flags, message", [
    (["--lr-milestones", "60,30"], "--lr-milestones must be increasing (got 60,30)"),
    (["--lr-milestones", "30,95"], "--lr-milestones must lie in [--warmup-epochs=5, --epochs=90)"),
    (["--wd-schedule", "1e-4,1e-5,0,0,0"], "--wd-schedule has 5 values but there are only 3"),
    (["--train-fraction", "0"], "--train-fraction must be in (0, 1]"),
    (["--codistill-dir", "X", "--codistill-id", "0", "--codistill-gamma", "-1"],
     "gamma (--codistill-gamma) must be > 0 (got -1.0)"),
    (["--codistill-dir", "X", "--codistill-id", "2"], "--codistill-id must be in [0, "),
    (["--codistill-dir", "X"], "--codistill-id is required"),
    (["--codistill-temperature", "2"], "--codistill-temperature 2.0 only applies to --codistill-loss kl"),
    (["--preset", "goyal-codistill"], "--preset goyal-codistill needs --codistill-dir"),
    (["--arch", "resnet50"], "--arch resnet50 needs torchvision"),
])
def test_bad_flags_fail_before_training_naming_the_flag(tmp_path, capsys, flags, message):
    flags = [str(tmp_path / f) if f == "X" else f for f in flags]
    with pytest.raises(SystemExit) as exit_:
        main(["--dummy", "--arch", "resnet8", "--save-dir", str(tmp_path / "run"), *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_data_dir_without_torchvision_names_the_flags(tmp_path):
    proc = run(vision("--data", tmp_path, "--arch", "resnet8"), check=False, timeout=60)
    assert proc.returncode == 2
    assert "--data" in proc.stderr and "needs torchvision" in proc.stderr and "--dummy" in proc.stderr


# -- --amp, --channels-last, --compile ---------------------------------------------------


def installed_peer(codistill, model, snapshot_update=4):
    """Step the model's exchange until the peer snapshot at ``snapshot_update`` is in."""
    codistill.step(snapshot_update)
    for peer in codistill.exchange.peers.values():
        if peer.pending is not None:
            peer.pending.result(timeout=30)
    codistill.step(snapshot_update + 1)
    return codistill.peers()


def test_bf16_autocast_runs_model_and_peer_in_bf16_channels_last(tmp_path):
    x = tmp_path / "x"
    args = parse_args(TINY + ["--arch", "resnet8", "--amp", "bf16", "--channels-last",
                              "--codistill-dir", str(x), "--codistill-id", "0", "--codistill-interval", "4"])
    assert args.codistill_peer_dtype == "bf16"  # auto follows --amp
    torch.manual_seed(1)
    write_snapshot(x, 1, 4, cast_state_dict(build_model("resnet8", 10).state_dict(), "fp16"),
                   meta=model_meta("resnet8", 10), dtype="fp16")
    compute = Compute.from_args(args, torch.device("cpu"))
    model = build_model("resnet8", 10).to(memory_format=compute.memory_format)
    codistill = codistillation(args, model, 10)
    try:
        (peer,) = installed_peer(codistill, model)
        conv = peer.stem[0].weight
        assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        images = compute.images(torch.randn(8, 3, 16, 16))
        assert images.is_contiguous(memory_format=torch.channels_last)
        loss, penalty, output = update(model, images, torch.arange(8) % 10, optimizer, codistill,
                                       1.0, compute)
    finally:
        codistill.close()
    assert output.dtype == torch.bfloat16  # the model's forward ran under autocast
    assert torch.isfinite(loss) and penalty > 0
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.parameters())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_and_checkpoints_its_loss_scale(tmp_path, amp):
    main(TINY[:-2] + ["--lr-milestones", "", "--arch", "resnet8", "--epochs", "1", "--amp", amp, "--channels-last",
                 "--save-dir", str(tmp_path)])
    (record,) = metrics(tmp_path)
    assert 0 < record["train_loss"] < 10 and 0 < record["val_loss"] < 10  # finite, and learning
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    # fp16: the GradScaler's scale, 2^16 at the start, travels with the checkpoint
    assert (state["scaler"] is not None) == (amp == "fp16")
    if amp == "fp16":
        assert 0 < state["scaler"]["scale"] <= 2.0 ** 16


@pytest.mark.timeout(180)
def test_compile_trains_the_compiled_model_and_publishes_the_plain_one(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model):  # dynamo without code generation: seconds, not minutes
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    x = tmp_path / "x"
    main(TINY[:-2] + ["--lr-milestones", "", "--arch", "resnet8", "--epochs", "1", "--compile",
                      "--save-dir", str(tmp_path / "m0"),
                 "--codistill-dir", str(x), "--codistill-id", "0", "--codistill-interval", "8"])
    assert len(compiled) == 1
    (published,) = list_snapshots(x, 0)  # at update 8 of 16
    checkpoint = torch.load(tmp_path / "m0" / "checkpoint_last.pt", weights_only=True)
    for names in (read_snapshot(x, published.key).state_dict, checkpoint["model"]):
        assert "stem.0.weight" in names and not any("_orig_mod" in n for n in names)


def test_the_vision_trainer_exchanges_through_an_object_store(tmp_path, s3_url, capsys):
    """--codistill-dir takes a URL in the vision trainer too: it publishes into the
    bucket, and a missing bucket is refused before training, naming the flag."""
    main(TINY[:-2] + ["--lr-milestones", "", "--arch", "resnet8", "--epochs", "1",
                      "--save-dir", str(tmp_path / "m0"), "--codistill-dir", s3_url,
                      "--codistill-id", "0", "--codistill-interval", "8"])
    (published,) = list_snapshots(s3_url, 0)  # at update 8 of 16
    assert published.num_updates == 8
    assert read_snapshot(s3_url, published.key).meta  # the config a peer is rebuilt from
    with pytest.raises(SystemExit) as exit_:
        parse_args(TINY + ["--arch", "resnet8", "--codistill-dir", "s3://no-such-bucket/x",
                           "--codistill-id", "0"])
    assert exit_.value.code == 2
    assert "--codistill-dir s3://no-such-bucket/x: the bucket" in capsys.readouterr().err
