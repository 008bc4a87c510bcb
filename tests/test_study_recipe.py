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
    env = dict(os.environ)
    env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHON=str(BIN / "python"),
               LANG_PAIR="xx-en", LOCALE_DIR=str(made_up_catalog(tmp_path / "locale")),
               VALID_PAIRS="20", TEST_PAIRS="20", MIN_PAIRS="100", VOCAB_SIZE="60", TRAIN_FRACTION="1",
               UPDATES="8", LAYERS="1", DIM="32", EVAL_BEAM="1", SEEDS="1", STUDY_DIR=str(tmp_path / "study"),
               GRID=GRID, REGIME="codistill-a0.1-k4", WAIT_FOR_PEERS="120")
    proc = subprocess.run(["bash", str(REPO / "recipes" / "study.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
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
