"""Smoke tests of benchmarks/: each script runs in --quick mode and prints its ratio
lines as positive numbers. Timings are the scripts' business, never asserted here."""
import math
import os
import re
import sys

import pytest

from conftest import BIN, REPO, cpu_env, run
from fairseq_codistill.core.precision import fast_half

RATIO = re.compile(r"^ratio (\S+) = (\S+)", re.M)
BYTES = re.compile(r"^bytes (\S+) = (\d+)", re.M)

EXPECTED = {
    "step_overhead": {"overhead", "overhead_alpha0", "efficiency"},
    "exchange": {"write_fraction_fp16", "read_fraction_fp16", "stall_swap_fp16",
                 "averaging_localsgd_fp16", "averaging_diloco_fp16",
                 "averaging_first_localsgd_fp16", "averaging_first_diloco_fp16"},
    "hf_overhead": {"overhead_alpha0", "efficiency"},
    "communication": {"allreduce_over_codistill", "orders_of_magnitude"},
    "memory": {"peer_cost"},
    "goodput": {"goodput_codistill", "goodput_localsgd_async", "goodput_localsgd_sync",
                "goodput_allreduce"},
    "peer_precision": {"error_bf16", "grad_error_bf16", "error_fp16", "grad_error_fp16",
                       "error_snapshot_int8", "grad_error_snapshot_int8",
                       "logit_error_snapshot_int8", "payload_int8",
                       "error_snapshot_fp16", "logit_error_snapshot_fp16", "payload_fp16"},
}
# Byte counts (``bytes <name> = <int>`` lines), by script.
EXPECTED_BYTES = {
    "exchange": {f"bytes_per_exchange_{d}" for d in ("fp32", "fp16", "bf16", "int8")},
}


def ratios(text: str) -> dict:
    return {name: float(value) for name, value in RATIO.findall(text)}


def byte_counts(text: str) -> dict:
    return {name: int(value) for name, value in BYTES.findall(text)}


def test_ratio_lines_parse():
    text = "time  x 1.0 s\nratio overhead = 1.234   (t / t)   target <= 1.02: MISSED\n"
    assert ratios(text) == {"overhead": 1.234}


# step_overhead and memory run --quick inside gpu_check.sh's CPU path (below), which checks
# their ratios too: not run twice.
IN_GPU_CHECK = {"step_overhead", "memory"}


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(set(EXPECTED) - IN_GPU_CHECK))
def test_quick_run_prints_positive_ratios(script, tmp_path):
    proc = run([sys.executable, REPO / "benchmarks" / f"{script}.py", "--quick"],
               timeout=300, cwd=tmp_path)
    found = ratios(proc.stdout)
    assert EXPECTED[script] <= set(found), proc.stdout
    for name, value in found.items():
        assert math.isfinite(value) and value > 0, f"{name} = {value}\n{proc.stdout}"
    assert EXPECTED_BYTES.get(script, set()) <= set(byte_counts(proc.stdout)), proc.stdout


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_exchange_against_s3(s3_url, tmp_path):
    """--dir s3://...: fractions of the store's plain put/get, bytes per exchange, the
    stall with a PeerExchange in the store; all it wrote is deleted. A 5M-parameter
    model, one round, two dtypes: ~30 s."""
    import s3fs

    proc = run([sys.executable, REPO / "benchmarks" / "exchange.py", "--dir", s3_url,
                "--params", "5e6", "--reps", "1", "--dtypes", "fp16", "int8"],
               timeout=110, cwd=tmp_path, env=cpu_env())  # os.environ: the server's AWS_* too
    found = ratios(proc.stdout)
    assert {"write_fraction_fp16", "read_fraction_fp16", "stall_swap_fp16",
            "write_fraction_int8", "read_fraction_int8", "stall_swap_int8"} <= set(found), proc.stdout
    for name, value in found.items():
        assert math.isfinite(value) and value > 0, f"{name} = {value}\n{proc.stdout}"
    assert "plain put MB/s" in proc.stdout and "posix_fadvise" not in proc.stdout, proc.stdout
    sizes = byte_counts(proc.stdout)
    # int8: 1 byte per weight-matrix entry (+ an fp16 scale per row), biases and norms in
    # fp16 as an fp16 snapshot has them: about half of fp16's 2 bytes per entry
    assert 0 < sizes["bytes_per_exchange_int8"] < 0.6 * sizes["bytes_per_exchange_fp16"], sizes
    bucket = s3_url[len("s3://"):].split("/")[0]
    assert s3fs.S3FileSystem().ls(bucket, refresh=True) == [], "the benchmark left objects behind"


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_gpu_check_runs_its_cpu_path(tmp_path):
    """DEVICE=cpu: every step of benchmarks/gpu_check.sh at smoke sizes, in bf16 where this
    CPU has it fast and in fp32 elsewhere (fairseq's --fp16 needs CUDA; an emulated bf16
    is several times slower than fp32, and the big step timed out there)."""
    results = tmp_path / "results"
    env = dict(cpu_env(), DEVICE="cpu", RESULTS_DIR=str(results), PYTHON=sys.executable,
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = run(["bash", REPO / "benchmarks" / "gpu_check.sh"], timeout=880, cwd=tmp_path, env=env)
    half = fast_half("cpu")  # "bf16" or "fp32"
    steps = {f"step_overhead_iwslt_{half}", f"step_overhead_big_{half}", f"memory_{half}",
             "vision", "nmt"}
    assert {p.stem for p in results.glob("*.txt")} == steps | {"summary"}  # no temp files left
    summary = {}
    for line in (results / "summary.txt").read_text().splitlines():
        step, rest = line.split(": ", 1)
        summary.update({f"{step}.{k}": v for k, v in ratios(rest).items()})
    expected = {f"step_overhead_big_{half}.overhead", "vision.vision_overhead"} | {
        f"{step}.{name}" for script, step in (("step_overhead", f"step_overhead_iwslt_{half}"),
                                              ("memory", f"memory_{half}"))
        for name in EXPECTED[script]}
    assert expected <= set(summary), summary
    for name, value in summary.items():
        assert math.isfinite(value) and value > 0, (name, summary)
    nmt = (results / "nmt.txt").read_text()
    for i in (0, 1):  # both models trained all their updates with their peer loaded
        assert re.search(rf"model {i}: updates 20, .* num_peers 1\.0", nmt), nmt
    assert "num_peers 1" in (results / "vision.txt").read_text()  # the pair's snapshot was used
    assert "summary" in proc.stdout
