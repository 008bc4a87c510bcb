"""The ImageNet recipes: lint, the GPU split they would launch, and a CPU smoke run."""
import json
import os
import subprocess

import pytest

from conftest import BIN, REPO, cpu_env
from fairseq_codistill.exchange.snapshot import list_snapshots

RECIPES = sorted((REPO / "recipes").glob("resnet50_imagenet_*.sh"))


def recipe(name, timeout=60, **env):
    full = cpu_env()
    full.pop("CUDA_VISIBLE_DEVICES", None)
    full.update(PATH=f"{BIN}{os.pathsep}{full['PATH']}", **{k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", str(REPO / "recipes" / name)], capture_output=True, text=True,
                          timeout=timeout, env=full)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_lint(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    lint = subprocess.run([str(BIN / "shellcheck"), "-x", str(path)], capture_output=True,
                          text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout


def test_codistill_recipe_gives_each_model_half_the_gpus(tmp_path):
    proc = recipe("resnet50_imagenet_codistill.sh", NGPU=8, DATA=tmp_path, SAVE_DIR=tmp_path / "r",
                  DRY_RUN=1, ARCHS="resnet50,resnext101_32x8d")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0,1,2,3 torchrun --standalone --nproc-per-node 4 ")
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=4,5,6,7 torchrun --standalone --nproc-per-node 4 ")
    for i, arch in enumerate(("resnet50", "resnext101_32x8d")):
        assert f"--arch {arch} --preset goyal-codistill-adjusted" in lines[i]
        assert f"--codistill-id {i} --codistill-num-models 2 --codistill-interval 2500" in lines[i]


def test_recipes_reject_a_bad_split_and_missing_data(tmp_path):
    proc = recipe("resnet50_imagenet_codistill.sh", NGPU=3, DATA=tmp_path, SAVE_DIR=tmp_path, DRY_RUN=1)
    assert proc.returncode == 1 and "NGPU=3 GPUs do not split evenly over NUM_MODELS=2" in proc.stderr
    proc = recipe("resnet50_imagenet_codistill.sh", NGPU=8, CUDA_VISIBLE_DEVICES="0,1", DATA=tmp_path,
                  SAVE_DIR=tmp_path, DRY_RUN=1)
    assert proc.returncode == 1 and "NGPU=8 but only 2 GPU(s) are visible" in proc.stderr
    proc = recipe("resnet50_imagenet_allreduce.sh", NGPU=1, SAVE_DIR=tmp_path, DRY_RUN=1)
    assert proc.returncode == 1 and "set DATA to the ImageNet root" in proc.stderr


@pytest.mark.timeout(180)
def test_codistill_recipe_smoke_on_cpu(tmp_path):
    """TINY=1: two resnet8 models for 2 epochs of 20 updates under the adjusted preset,
    whose 3 milestones TINY puts at epochs 1, 1.5, 1.75."""
    proc = recipe("resnet50_imagenet_codistill.sh", timeout=170, TINY=1, SAVE_DIR=tmp_path)
    assert proc.returncode == 0, proc.stderr + "".join(
        (tmp_path / f"model{i}" / "train.log").read_text()[-2000:] for i in range(2))
    for i in range(2):
        log = [json.loads(x) for x in (tmp_path / f"model{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [(r["epoch"], r["updates"]) for r in log] == [(1, 20), (2, 40)]
        # The last update of epoch 2 is past all 3 decays: LR 0.1 * 16/256 * 0.1^3, weight decay 0.
        assert log[1]["lr"] == pytest.approx(6.25e-6) and log[1]["wd"] == 0.0
        assert log[0]["wd"] == 1e-4 and all(r["alpha"] == 1.0 for r in log)
    assert all(list_snapshots(tmp_path / "exchange", i) for i in range(2))  # both published


@pytest.mark.parametrize("env, flags", [
    # No GPU here, so auto finds no bf16 GPU: fp32; NGPU > 0 still means NHWC.
    ({}, "--amp none --channels-last"),
    ({"AMP": "bf16", "COMPILE": "1"}, "--amp bf16 --channels-last --compile"),
    ({"AMP": "fp16", "CHANNELS_LAST": "0"}, "--amp fp16"),
])
def test_recipes_pass_the_speed_flags(tmp_path, env, flags):
    for name in ("resnet50_imagenet_codistill.sh", "resnet50_imagenet_allreduce.sh"):
        proc = recipe(name, NGPU=8, DATA=tmp_path, SAVE_DIR=tmp_path / "r", DRY_RUN=1, **env)
        assert proc.returncode == 0, proc.stderr
        for line in proc.stdout.splitlines():
            assert f"--seed 0 {flags} --arch" in line, line
