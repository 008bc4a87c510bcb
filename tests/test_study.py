"""fairseq_codistill.study (fairseq-codistill-report --study) on logs written here."""
import json

import pytest

from fairseq_codistill import report, study

T = "2026-12-01 10:00:00 | INFO"


def write_run(run_dir, meta, finals, dists):
    """A run of len(finals) models: valid NLL 9.0 at update 10, then finals[i] at update 20."""
    run_dir.mkdir(parents=True)
    (run_dir / "study.json").write_text(json.dumps(meta))
    dirs = [run_dir] if len(finals) == 1 else [run_dir / f"model{i}" for i in range(len(finals))]
    for d, final, dist in zip(dirs, finals, dists):
        d.mkdir(exist_ok=True)
        lines = [
            f'{T} | train_inner | {{"nll_loss": "6.0", "param_dist": "{dist / 2}", "num_updates": "10"}}',
            f'{T} | valid | {{"valid_nll_loss": "9.0", "valid_num_updates": "10"}}',
            f'{T} | train_inner | {{"nll_loss": "4.0", "param_dist": "{dist}", "num_updates": "20"}}',
            f'{T} | valid | {{"valid_nll_loss": "{final}", "valid_num_updates": "20"}}',
        ]
        (d / "train.log").write_text("\n".join(lines) + "\n")


def codistill(name, interval=40, gamma=1.1, regime=False):
    return {"group": name, "kind": "codistill", "regime": regime, "dropout": 0.1, "alpha": 0.1,
            "gamma": gamma, "interval": interval, "burn_in": 0, "loss": "mse"}


@pytest.fixture
def study_dir(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        s = {"seed": seed}
        write_run(runs / "baseline" / f"seed{seed}", {"group": "baseline", "kind": "baseline", **s},
                  [4.0 + 0.02 * seed], [30.0])
        # two controls: dropout 0.3 is the better one, so the claims compare with it
        write_run(runs / "control" / f"seed{seed}", {"group": "control", "kind": "control", **s},
                  [5.0 + 0.02 * seed], [40.0])
        write_run(runs / "control-d0.3" / f"seed{seed}", {"group": "control-d0.3", "kind": "control", **s},
                  [4.5 + 0.02 * seed], [38.0])
        write_run(runs / "k40" / f"seed{seed}", {**codistill("codistill-k40", regime=True), **s},
                  [4.0 + 0.01 * seed, 4.1 + 0.01 * seed], [20.0, 22.0])
        write_run(runs / "k20" / f"seed{seed}", {**codistill("codistill-k20", interval=20), **s},
                  [4.2, 4.3], [20.0, 20.0])
        write_run(runs / "k160" / f"seed{seed}", {**codistill("codistill-k160", interval=160), **s},
                  [4.52, 4.53], [20.0, 20.0])  # within the spread of the control: not a win
        write_run(runs / "const" / f"seed{seed}", {**codistill("codistill-const", gamma=1), **s},
                  [4.3, 4.3], [20.0, 20.0])
    return runs


def test_groups_pool_seeds_and_both_models(study_dir):
    groups = {g.name: g for g in study.load_study(study_dir)}
    regime = groups["codistill-k40"]
    assert regime.regime and sorted(regime.runs) == [1, 2] and len(regime.models) == 4
    stat = regime.stat(study.final_valid)
    # models 4.01, 4.11 (seed 1), 4.02, 4.12 (seed 2): mean 4.065, spread 0.11
    assert stat.mean == pytest.approx(4.065) and stat.spread == pytest.approx(0.11)
    assert str(stat) == "4.065 ± 0.055"
    assert regime.stat(study.best_valid).mean == pytest.approx(4.065)  # 9.0 first, then lower
    assert groups["baseline"].stat(study.final_param_dist).mean == 30.0


def test_claims_against_the_best_control(study_dir):
    verdicts = {c.split(".")[0]: (m, v) for c, m, v in study.claims(study.load_study(study_dir))}
    # 1: 4.065 vs all-reduce 4.03: +0.035 <= spread max(0.11, 0.02): a match
    assert verdicts["1"][1] == "reproduced" and "+0.035 (spread 0.110)" in verdicts["1"][0]
    # 2: against control-d0.3 (4.53), not the weaker control (5.03): -0.465 > 0.11
    assert verdicts["2"][1] == "reproduced" and "control-d0.3" in verdicts["2"][0]
    # 3: 0.5x (4.25) and 1x beat 4.53 by more than the spread, 4x (4.525) does not
    assert verdicts["3"][1] == "not reproduced (2 of 3 beat the control)"
    assert "0.5x: -0.280, 1x: -0.465, 4x: -0.005" in verdicts["3"][0]
    # 4: exponential 4.065 vs constant 4.3
    assert verdicts["4"][1] == "reproduced"
    # 5: distance 21 (mean of 20, 22) vs all-reduce's 30, as in the paper; alone 38 beside it
    assert verdicts["5"][1] == "reproduced"
    assert "vs baseline 30.000 ± 0.000: -9.000 (spread 2.000); alone: 38.000" in verdicts["5"][0]


def test_report_cli_writes_the_study(study_dir, tmp_path, capsys):
    assert report.main(["--study", str(study_dir), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "study.md").read_text()
    assert "| codistill-k40 **(regime)** | codistill |" in md
    assert "| control-d0.3 | control | dropout - | 1,2 | 2 | 4.530 ± 0.010 |" in md
    assert (tmp_path / "out" / "study_valid.png").stat().st_size > 10_000
    assert "study.md" in capsys.readouterr().out


def test_report_cli_without_runs_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--study"):
        report.main(["--study", str(tmp_path), "--out", str(tmp_path / "out")])
