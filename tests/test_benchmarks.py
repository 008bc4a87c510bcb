"""Smoke tests of benchmarks/: each script runs in --quick mode and prints its ratio
lines as positive numbers. Timings are the scripts' business, never asserted here."""
import math
import re
import sys

import pytest

from conftest import REPO, run

RATIO = re.compile(r"^ratio (\S+) = (\S+)", re.M)

EXPECTED = {
    "step_overhead": {"overhead", "overhead_alpha0", "efficiency"},
    "exchange": {"write_fraction_fp16", "read_fraction_fp16", "stall_swap_fp16"},
    "communication": {"allreduce_over_codistill", "orders_of_magnitude"},
    "memory": {"peer_cost"},
}


def ratios(text: str) -> dict:
    return {name: float(value) for name, value in RATIO.findall(text)}


def test_ratio_lines_parse():
    text = "time  x 1.0 s\nratio overhead = 1.234   (t / t)   target <= 1.02: MISSED\n"
    assert ratios(text) == {"overhead": 1.234}


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_run_prints_positive_ratios(script, tmp_path):
    proc = run([sys.executable, REPO / "benchmarks" / f"{script}.py", "--quick"],
               timeout=300, cwd=tmp_path)
    found = ratios(proc.stdout)
    assert EXPECTED[script] <= set(found), proc.stdout
    for name, value in found.items():
        assert math.isfinite(value) and value > 0, f"{name} = {value}\n{proc.stdout}"
