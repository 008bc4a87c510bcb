"""recipes/study.sh end to end, shortened: made-up catalogs, a tiny model, 8 updates, one
seed, a line of every kind and of settings the grid changes (interval, depth, run length); every
model evaluated at its best and last checkpoint, and the report's tables from them. The
report's choice among several controls is tests/test_study.py's (one control here)."""
import json
import os
import subprocess

import pytest

from conftest import BIN, REPO
from test_gettext import made_up_catalog

pytestmark = pytest.mark.e2e


def run_study(tmp_path, grid, **knobs):
    """recipes/study.sh with GRID ``grid`` on a made-up catalog: 8 updates of a 1-layer model,
    one seed, the regime codistill-a0.1-k4; ``knobs`` are more of its variables."""
    env = dict(os.environ)
    locale = tmp_path / "locale"  # made once: a second study run in a test reuses it
    env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHON=str(BIN / "python"),
               LANG_PAIR="xx-en", LOCALE_DIR=str(locale if locale.exists() else made_up_catalog(locale)),
               VALID_PAIRS="20", TEST_PAIRS="20", MIN_PAIRS="100", VOCAB_SIZE="60", TRAIN_FRACTION="1",
               UPDATES="8", LAYERS="1", DIM="32", EVAL_BEAM="1", SEEDS="1", STUDY_DIR=str(tmp_path / "study"),
               GRID=grid, REGIME="codistill-a0.1-k4", WAIT_FOR_PEERS="120", **knobs)
    return subprocess.run(["bash", str(REPO / "recipes" / "study.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)

GRID = """
baseline             baseline
control              control
codistill-a0.1-k4    codistill  interval=4
localsgd-k4          localsgd   interval=4
diloco-k4            diloco     interval=4
codistill-deep2      codistill  interval=4 peer_layers=2
codistill-u16        codistill  interval=4 updates=16
"""


def test_the_study_trains_evaluates_and_reports_every_kind(tmp_path):
    proc = run_study(tmp_path, GRID)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "study" / "runs"
    reused = 0
    for line in GRID.split("\n"):
        if not line.strip():
            continue
        name, kind = line.split()[:2]
        run = runs / name / "seed1"
        meta = json.loads((run / "study.json").read_text())
        assert meta["kind"] == kind and meta["group"] == name
        models = [run] if kind in ("baseline", "control") else [run / "model0", run / "model1"]
        for model in models:
            for evaluated in ("eval.json", "eval-best.json"):
                result = json.loads((model / evaluated).read_text())
                assert 0 <= result["bleu"] <= 100 and 0 <= result["chrf"] <= 100 and result["num_sentences"] == 20
            assert not list(model.glob("checkpoint*.pt"))  # evaluated, then deleted
            best = json.loads((model / "eval-best.json").read_text())
            if "same_as" in best:  # the best checkpoint was the last: scored once
                last = json.loads((model / "eval.json").read_text())
                assert best["same_as"].endswith("checkpoint_last.pt") and best["bleu"] == last["bleu"]
                assert not (model / "eval-best-test.txt").exists()
                reused += 1
            else:
                assert (model / "eval-best-test.txt").exists()
    assert reused > 0  # 8 updates: most models are best at their last
    assert json.loads((runs / "codistill-u16" / "seed1" / "study.json").read_text())["gamma"] == pytest.approx(
        1.1 ** 0.5, abs=1e-4)  # twice the updates: alpha grows half as fast
    assert "--encoder-layers 2" in (runs / "codistill-deep2" / "seed1" / "model1" / "train.log").read_text()
    study = (tmp_path / "study" / "report" / "study.md").read_text()
    assert "| codistill-a0.1-k4 **(regime)** | codistill |" in study
    assert "## The paper's claims at this scale" in study and "## The methods at equal bytes" in study
    assert "DiLoCo: diloco-k4" in study and "LocalSGD: localsgd-k4" in study
    assert "## Heterogeneous pairs" in study and "codistill-deep2/model1 (2+2 layers)" in study
    assert "**updates 16**" in study  # the longer run is a setting of its own


SCENARIO_GRID = """
codistill-a0.1-k4          codistill  interval=4
baseline-r2-W-slow2        baseline   ranks=2 budget=W slowdown=2
localsgd-k4-async-W-slow2  localsgd   interval=4 async=1 budget=W slowdown=2
codistill-k4-lead0-W-pre   codistill  interval=4 max_lead=0 budget=W preempt=0.5W:0.25W
control-W                  control    budget=W
"""


def test_the_scenarios_train_for_the_regimes_wall_time_with_faults(tmp_path):
    """SCENARIOS=1: the regime's pair first, its wall time W the budget of every other line
    of the seed; a slowed rank of a real 2-rank all-reduce job, a slowed asynchronous
    LocalSGD pair, a preempted codistilled pair that never waits; the report's table."""
    proc = run_study(tmp_path, SCENARIO_GRID, SCENARIOS="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "study" / "runs"
    from fairseq_codistill.tools import study
    wall = study.regime_wall(runs / "codistill-a0.1-k4" / "seed1")
    meta = {line.split()[0]: json.loads((runs / line.split()[0] / "seed1" / "study.json").read_text())
            for line in SCENARIO_GRID.strip().splitlines()}
    assert "budget" not in meta["codistill-a0.1-k4"] and meta["codistill-a0.1-k4"]["env"]["precision"]
    for name in list(meta)[1:]:
        assert meta[name]["budget"] == pytest.approx(wall, abs=0.1)
    assert meta["codistill-k4-lead0-W-pre"]["preempt"] == pytest.approx([0.5 * wall, 0.25 * wall], abs=0.1)
    assert meta["codistill-k4-lead0-W-pre"]["max_lead"] == 0 and meta["localsgd-k4-async-W-slow2"]["asynchronous"]
    # the all-reduce job: 2 ranks, rank 1 held stopped about half of its time
    allreduce = json.loads((runs / "baseline-r2-W-slow2" / "seed1" / "launch.json").read_text())["model0"]
    assert allreduce["slowed_ranks"] == [1] and allreduce["paused_seconds"] > 0
    assert "'distributed_world_size': 2" in (runs / "baseline-r2-W-slow2" / "seed1" / "train.log").read_text()
    assert len(json.loads((runs / "codistill-k4-lead0-W-pre" / "seed1" / "launch.json").read_text())
               ["model1"]["preemptions"]) == 1
    text = (tmp_path / "study" / "report" / "study.md").read_text()
    assert "## Which method? Equal wall time" in text
    # the fast model alone has no fault: it is the equal-speed column, and stands in every other
    assert "| method | equal speed | 2x straggler | preemption |" in text and "| the fast model alone |" in text


SIZES_GRID = """
codistill-a0.1-k4            codistill  interval=4
codistill-k4-deep2-lead0-W   codistill  interval=4 peer_layers=2 peer_dim=48 max_lead=0 budget=W max_updates=6
kd-deep2-16s                 kd         interval=4 peer_layers=2 dim=16 peer_dim=32 budget=16
"""


def test_two_phase_kd_trains_a_teacher_then_a_student_from_it_within_w(tmp_path):
    """SCENARIOS=sizes: the kd line trains a 2-layer teacher alone for half of its budget
    (16 s here: a tiny W is a second, too short for the student to load its teacher),
    publishes its checkpoint, and trains the 1-layer student (of width 16, the teacher of
    the regime's 32) for the rest, distilling (KL) from it. The pair's model 1 is 2 layers
    of width 48, and its guard on updates (max_updates) reaches both models' fairseq-train."""
    proc = run_study(tmp_path, SIZES_GRID, SCENARIOS="sizes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from fairseq_codistill.tools import study
    runs = tmp_path / "study" / "runs"
    wall = study.regime_wall(runs / "codistill-a0.1-k4" / "seed1")
    pair = json.loads((runs / "codistill-k4-deep2-lead0-W" / "seed1" / "study.json").read_text())
    assert pair["budget"] == pytest.approx(wall, abs=0.1) and pair["peer_layers"] == 2
    # widths other than the regime's are written, the regime's is not
    assert pair["peer_dim"] == 48 and "dim" not in pair and pair["max_updates"] == 6
    for i, width in enumerate((32, 48)):
        log = (runs / "codistill-k4-deep2-lead0-W" / "seed1" / f"model{i}" / "train.log").read_text()
        assert f"encoder_embed_dim={width}," in log and "max_update=6," in log
        assert f"decoder_ffn_embed_dim={2 * width}," in log  # feed-forward twice the width
    kd = runs / "kd-deep2-16s" / "seed1"
    meta = json.loads((kd / "study.json").read_text())
    assert meta["kind"] == "kd" and meta["peer_layers"] == 2 and meta["kd_loss"] == "kl"
    assert meta["budget"] == 16.0 and meta["teacher_share"] == 0.5
    assert meta["dim"] == 16 and "peer_dim" not in meta
    teacher, student = (kd / "teacher" / "train.log").read_text(), (kd / "model0" / "train.log").read_text()
    assert "encoder_layers=2," in teacher and "encoder_layers=1," in student
    assert "encoder_embed_dim=32," in teacher and "encoder_embed_dim=16," in student
    assert "codistill_loss='kl'" in student and '"num_peers": "1"' in student  # the teacher, loaded
    # each phase has half of the budget (fairseq's --stop-time-hours, in hours)
    assert f"stop_time_hours={round(8 / 3600, 6)}," in teacher and f"stop_time_hours={round(8 / 3600, 6)}," in student
    assert "loaded model 1 at its update" in student  # the teacher's published snapshot
    assert json.loads((kd / "model0" / "eval.json").read_text())["num_sentences"] == 20
    assert not list(kd.rglob("checkpoint*.pt")) and not (kd / "exchange").exists()
    text = (tmp_path / "study" / "report" / "study.md").read_text()
    assert "| method | two model sizes |" in text and "| two-phase KD" in text
    # run again: every line is skipped, and keeps the study.json (date, commit) it ran with
    described = {p: p.read_text() for p in runs.rglob("study.json")}
    proc = run_study(tmp_path, SIZES_GRID, SCENARIOS="sizes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(described) == 3 and all(p.read_text() == text for p, text in described.items())


def test_a_kd_line_without_the_teachers_depth_is_refused(tmp_path):
    env = dict(os.environ)
    env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHON=str(BIN / "python"),
               GRID="kd-W  kd  budget=W", SCENARIOS="sizes", STUDY_DIR=str(tmp_path / "study"))
    proc = subprocess.run(["bash", str(REPO / "recipes" / "study.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "line kd-W: kind kd needs peer_layers=N" in proc.stderr


@pytest.mark.parametrize("scenario, other", [("straggler", "baseline-r2-W-pre"), ("preemption", "baseline-r2-W-slow2")])
def test_one_scenario_runs_only_its_lines_and_a_line_outside_the_grid_is_refused(tmp_path, scenario, other):
    """SCENARIOS=straggler (preemption) is the regime's pair, the fast model alone and that
    scenario's lines; a GRID_LINES name outside it is refused before any data or run."""
    env = dict(os.environ)
    env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHON=str(BIN / "python"),
               SCENARIOS=scenario, GRID_LINES=f"control-W {other}", STUDY_DIR=str(tmp_path / "study"))
    proc = subprocess.run(["bash", str(REPO / "recipes" / "study.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert f"study: GRID_LINES: no line '{other}' in the grid of SCENARIOS={scenario}" in proc.stderr
    lines = proc.stderr.split("its lines:")[1].split()
    suffix = "-slow2" if scenario == "straggler" else "-pre"
    assert lines[:2] == ["codistill-a0.1-k40", "control-W"]
    assert len(lines) == 8 and all(name.endswith(suffix) for name in lines[2:])
    assert "async-W" + suffix in " ".join(lines) and "lead0-W" + suffix in " ".join(lines)
    assert not (tmp_path / "study").exists() and not (tmp_path / "data-bin").exists()
