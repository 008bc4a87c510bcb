"""recipes/demo.sh end to end, shortened: made-up catalogs, 10 updates, 20 test sentences."""
import json
import re
import os
import subprocess

import pytest

from conftest import BIN, REPO
from test_gettext import made_up_catalog

pytestmark = pytest.mark.e2e

ROWS = ("baseline", "codistill/model0", "codistill/model1", "codistill/ensemble", "control")


@pytest.fixture
def locale(tmp_path):
    return made_up_catalog(tmp_path / "locale")


def run_demo(tmp_path, locale):
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        DEMO_DIR=str(tmp_path / "demo"), DATA=str(tmp_path / "data"),
        LANG_PAIR="xx-en", LOCALE_DIR=str(locale),
        VALID_PAIRS="20", TEST_PAIRS="20", MIN_PAIRS="100", VOCAB_SIZE="60",
        DEMO_UPDATES="10", DEMO_VALIDATE="5", DEMO_BEAM="1", TRAIN_FRACTION="1",
    )
    proc = subprocess.run(["bash", str(REPO / "recipes" / "demo.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(stdout):
    """label -> cells of the final table printed by fairseq-codistill-report."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run ") and "val NLL" in line)
    header = lines[start].split("  ")
    assert [h.strip() for h in header if h.strip()][:5] == ["run", "updates", "train loss", "train NLL", "val NLL"]
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_demo_end_to_end(tmp_path, locale):
    out = run_demo(tmp_path, locale)
    assert "exact single-process equivalent" in out
    assert "| INFO |" not in out  # fairseq's logs go to files
    rows = table_rows(out)
    assert list(rows) == list(ROWS)
    for label in ROWS[:3] + ("control",):
        updates, _, _, valid_nll, bleu = rows[label][:5]
        assert updates == "10"
        assert 0 < float(valid_nll) < 20 and 0 <= float(bleu) <= 100
    # the codistilled models' val NLL stands next to the baseline's, from the same eval
    demo = tmp_path / "demo"
    for run, label in (("baseline", "baseline"), ("codistill/model0", "codistill/model0")):
        result = json.loads((demo / run / "eval.json").read_text())
        assert result["split"] == "test" and result["num_sentences"] == 20
        # checkpoint_last is the model of the last validation; P- scores have 4 decimals
        assert float(rows[label][3]) == pytest.approx(result["valid_nll"], abs=2e-3)
    # each run records the machine it trained on, for the README's kept demo run
    for run in ("baseline", "control", "codistill"):
        env = json.loads((demo / run / "env.json").read_text())
        assert env["device"] == "cpu" and env["precision"] in ("bf16", "fp32") and env["cpu"] and env["torch"]
    ensemble = json.loads((demo / "codistill" / "ensemble" / "eval.json").read_text())
    assert ensemble["checkpoint"].count(".pt") == 2
    assert rows["codistill/ensemble"][3] == f"{ensemble['valid_nll']:.3f}"

    md = (demo / "report" / "report.md").read_text()
    assert all(f"| {label} |" in md for label in ROWS)
    for png in ("loss.png", "codistill.png", "param_dist.png"):
        assert (demo / "report" / png).stat().st_size > 10_000
    logs = [demo / "baseline" / "train.log", demo / "control" / "train.log"] + [
        demo / "codistill" / f"model{i}" / "train.log" for i in (0, 1)]
    assert all('"num_updates": "10"' in log.read_text() for log in logs)
    # every run logs its distance from the initial weights, the baseline too (Fig. 1c)
    assert all('"param_dist": ' in log.read_text() for log in logs)
    # the newcomer's summary: codistillation against training alone and against all-reduce
    mean = (float(rows["codistill/model0"][3]) + float(rows["codistill/model1"][3])) / 2
    printed = re.search(r"codistilled models: mean val NLL ([\d.]+) over 2", out)
    assert printed and float(printed.group(1)) == pytest.approx(mean, abs=1.5e-3)
    bleu = (float(rows["codistill/model0"][4]) + float(rows["codistill/model1"][4])) / 2
    for label, what in (("control", "the same model trained alone"), ("baseline", "all-reduce")):
        line = re.search(rf"vs {what} \({label}, {rows[label][3]}, BLEU {rows[label][4]}\): "
                         r"val NLL ([-+][\d.]+) \((\w+)\); BLEU ([-+][\d.]+) \((\w+)\)", out)
        assert line, out[-2000:]
        # "better" in each measure only where it holds: NLL lower, BLEU higher
        nll_diff, bleu_diff = mean - float(rows[label][3]), bleu - float(rows[label][4])
        assert float(line.group(1)) == pytest.approx(nll_diff, abs=2e-3)
        assert float(line.group(3)) == pytest.approx(bleu_diff, abs=2e-2)
        assert line.group(2) == ("level" if round(nll_diff, 3) == 0 else "better" if nll_diff < 0 else "worse")
        assert line.group(4) == ("level" if round(bleu_diff, 2) == 0 else "better" if bleu_diff > 0 else "worse")

    again = run_demo(tmp_path, locale)  # finished stages are skipped, the table comes back
    assert again.count("done already") == 2 and again.count("evaluated already") == 5
    assert table_rows(again) == rows
