"""Shared fixtures: a tiny generated parallel corpus, binarised once per session, and
a helper that runs fairseq's command-line tools with the plugin on the CPU."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_codistill.tools import logs

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "fairseq_codistill")
BIN = Path(sys.executable).parent

# A 2-layer, 32-dim transformer: a few dozen updates take seconds on one core.
TINY_ARCH = [
    "--arch", "transformer",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]
TINY_TRAIN = TINY_ARCH + [
    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500",
    "--log-format", "json", "--log-interval", "5", "--no-progress-bar",
    "--cpu", "--num-workers", "0", "--seed", "1",
    "--user-dir", PLUGIN,
]


def tool(name: str) -> str:
    """A console script of this venv (fairseq-train, fairseq-codistill-launch ...)."""
    return str(BIN / name)


def cpu_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def run(cmd, timeout=300, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command with bounded time; on failure, show its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", cpu_env()), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def json_logs(text: str, tag: str = "train_inner"):
    """The JSON records fairseq logs (--log-format json) under ``tag``: numbers as floats,
    keys without their train_/valid_ prefix (fairseq_codistill.tools.logs)."""
    return [record for _, record in logs.records(text, tag)]


def make_parallel_text(directory: Path, sizes=(("train", 400), ("valid", 40), ("test", 40)), seed=0):
    """A learnable toy task: the target is the upper-cased source, reversed."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        with open(directory / f"{split}.src", "w") as s, open(directory / f"{split}.tgt", "w") as t:
            for _ in range(n):
                toks = [rng.choice(words) for _ in range(rng.randint(3, 8))]
                s.write(" ".join(toks) + "\n")
                t.write(" ".join(reversed(toks)).upper() + "\n")


def binarize(text_dir: Path, dest: Path) -> Path:
    run([tool("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
         "--testpref", text_dir / "test", "--destdir", dest, "--joined-dictionary",
         "--workers", "1"])
    return dest


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_parallel_text(root / "text")
    return binarize(root / "text", root / "bin")


# -- figures: tests record measured numbers here; they print at the end of the run --------
FIGURES: dict = {}


def record_figure(section: str, name: str, value) -> None:
    FIGURES.setdefault(section, {})[name] = value


def pytest_terminal_summary(terminalreporter):
    for section, values in FIGURES.items():
        terminalreporter.write_sep("-", f"figures: {section}")
        for name, value in values.items():
            terminalreporter.write_line(f"{name}: {value}")


# -- an S3 API server on 127.0.0.1, for the object-store tests -----------------------------
@pytest.fixture(scope="session")
def s3_server():
    """One moto server for the session (fsspec caches S3 clients per process, so every
    test must see the same endpoint); this process's AWS_* variables point at it."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (make install)")
    pytest.importorskip("s3fs", reason="s3fs is not installed (make install)")
    from s3server import S3Server, restore_env, set_env

    server = S3Server()
    server.start()
    previous = set_env(server)
    yield server
    restore_env(previous)
    server.stop()


@pytest.fixture
def s3_url(s3_server) -> str:
    """A fresh bucket, with a prefix: s3://test-xxxx/exchange."""
    return s3_server.bucket() + "/exchange"
