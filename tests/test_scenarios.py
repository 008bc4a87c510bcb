"""The scenarios' section of the study (fairseq_codistill.tools.scenarios) and results as
data (fairseq_codistill.tools.results), on logs written here with known numbers."""
import json

import pytest

from fairseq_logs import write_eval, write_train_log

from fairseq_codistill.tools import report, results, scenarios, study

SETTING = {"lang_pair": "de-en", "updates": 480, "tokens": 1024, "fraction": 0.0625, "layers": 3}


def write_model(d, updates, wall, final_nll, bleu):
    """A model that reached ``updates`` in ``wall`` seconds: a training record and a
    validation at half of each, the last validation at the end."""
    half = updates // 2
    write_train_log(d, [("train_inner", {"nll_loss": 6.0, "num_updates": half, "wall": wall / 2}),
                        ("valid", {"nll_loss": final_nll + 1, "num_updates": half}),
                        ("train_inner", {"nll_loss": 5.0, "num_updates": updates, "wall": wall - 1}),
                        ("valid", {"nll_loss": final_nll, "num_updates": updates})],
                    done_seconds=wall)
    write_eval(d, bleu, 2 * bleu, bleu - 1, 2 * bleu - 2)


def write_line(runs, name, kind, seed, models, setting=SETTING, **meta):
    run = runs / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "study.json").write_text(json.dumps({**setting, "group": name, "kind": kind, "seed": seed,
                                                "env": {"cpu": "Test CPU", "precision": "bf16",
                                                        "device": "cpu", "torch": "2.13.0",
                                                        "fairseq": "0.12.3.1"}, **meta}))
    if len(models) == 1:
        write_model(run, *models[0])
    else:
        for i, m in enumerate(models):
            write_model(run / f"model{i}", *m)
    (run / "launch.json").write_text(json.dumps({"model1": {"paused_seconds": 25.0}}))


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        b = {"budget": 100.0}
        write_line(runs, "regime", "codistill", seed, [(480, 100, 5.0, 15.0)] * 2, regime=True,
                   alpha=0.1, gamma=1.1, interval=40, peer_layers=3)
        # equal speed: LocalSGD 2 updates/s, its async twin the same; codistillation 1.5/s
        write_line(runs, "lsgd", "localsgd", seed, [(200, 100, 5.0, 17.0 + seed)] * 2, interval=40, **b)
        write_line(runs, "lsgd-async", "localsgd", seed, [(200, 100, 5.0, 17.0)] * 2, interval=40,
                   asynchronous=True, **b)
        write_line(runs, "codi", "codistill", seed, [(150, 100, 5.1, 15.0)] * 2, max_lead=0,
                   alpha=0.1, interval=40, peer_layers=3, **b)
        write_line(runs, "alone", "control", seed, [(180, 100, 5.3, 14.0)], **b)
        # model 1 at half speed: synchronous LocalSGD waits (1.2/s), the async one does not
        write_line(runs, "lsgd-slow", "localsgd", seed, [(120, 100, 5.2, 16.0)] * 2, interval=40,
                   slowdown=2.0, **b)
        write_line(runs, "lsgd-async-slow", "localsgd", seed, [(190, 100, 5.1, 16.5), (100, 100, 5.4, 15.0)],
                   interval=40, asynchronous=True, slowdown=2.0, **b)
        write_line(runs, "codi-slow", "codistill", seed, [(147, 100, 5.1, 14.0 + seed), (75, 100, 5.5, 12.0)],
                   max_lead=0, alpha=0.1, interval=40, peer_layers=3, slowdown=2.0, **b)
    return runs


def test_the_table_has_a_column_per_scenario_and_bleu_at_w(runs, tmp_path):
    text = "\n".join(scenarios.report(tmp_path, study.load_study(runs)))
    assert "| method | equal speed | 2x straggler |" in text
    # LocalSGD at equal speed: BLEU 18 and 19 on the two seeds
    assert "| LocalSGD | 18.50 ± 0.50 | 16.00 ± 0.00 |" in text
    # the fast model alone suffers no fault: its one line stands in every column
    assert "| the fast model alone | 14.00 ± 0.00 | 14.00 ± 0.00 |" in text
    assert "| codistillation (never waits) | 15.00 ± 0.00 | 15.50 ± 0.50 |" in text


def test_goodput_is_the_pace_over_the_same_models_at_equal_speed(runs, tmp_path):
    lines = scenarios.Lines(study.load_study(runs))
    rows = {(r.split(" | ")[0].strip("| "), r.split(" | ")[1]): r.split(" | ")
            for r in scenarios.details(lines, "straggler")[2:]}
    # synchronous LocalSGD: 120 updates in 100 s against 200: 0.60 for both models
    assert rows[("lsgd-slow", "model0")][5] == "0.60 ± 0.00"
    # async: the fast model 190/200, the slowed one 100/200
    assert rows[("lsgd-async-slow", "model0")][5] == "0.95 ± 0.00"
    assert rows[("lsgd-async-slow", "model1 (faulty)")][5] == "0.50 ± 0.00"
    # codistillation: 147/150 = 0.98, and the updates it reached
    assert rows[("codi-slow", "model0")][5] == "0.98 ± 0.00"
    assert rows[("codi-slow", "model0")][4] == "147 ± 0"
    # in run: the fast model's pace over twice the straggler's (120/240, 190/200, 147/150)
    assert [rows[(line, "model0")][6] for line in ("lsgd-slow", "lsgd-async-slow", "codi-slow")] == [
        "0.50 ± 0.00", "0.95 ± 0.00", "0.98 ± 0.00"]
    assert rows[("codi-slow", "model1 (faulty)")][6] == "-"


def test_a_preempted_models_goodput_and_curve_count_its_time_away(runs):
    """Model 1 is killed at 35 s and back at 60 s; fairseq's wall clock and its "done training
    in" start again with the new attempt, which redoes update 60 (after the checkpoint at
    40) and ends at update 160 after 50 s: 110 s after the launch, not 50."""
    run = runs / "lsgd-pre" / "seed1"
    write_line(runs, "lsgd-pre", "localsgd", 1, [(150, 100, 5.0, 16.0)] * 2, interval=40,
               preempt=[30, 25], budget=100.0)
    write_train_log(run / "model1", [("train_inner", {"nll_loss": 6.5, "num_updates": 40, "wall": 20.0}),
                                     ("valid", {"nll_loss": 6.2, "num_updates": 40}),
                                     ("train_inner", {"nll_loss": 6.3, "num_updates": 60, "wall": 30.0}),
                                     ("train_inner", {"nll_loss": 6.3, "num_updates": 60, "wall": 5.0}),
                                     ("train_inner", {"nll_loss": 6.0, "num_updates": 80, "wall": 15.0}),
                                     ("valid", {"nll_loss": 5.9, "num_updates": 80}),
                                     ("train_inner", {"nll_loss": 5.5, "num_updates": 160, "wall": 45.0}),
                                     ("valid", {"nll_loss": 5.4, "num_updates": 160})],
                    done_seconds=50.0)
    (run / "launch.json").write_text(json.dumps({"model1": {"preemptions": [{"killed_at": 35.0,
                                                                             "restarted_at": 60.0}]}}))
    lines = scenarios.Lines(study.load_study(runs))
    group = lines.get("preemption", "LocalSGD")
    model0, model1 = group.runs[1]
    assert model1.restarted == [60.0] and model0.restarted == []
    assert scenarios.end_seconds(model1) == 110.0
    assert scenarios.valid_by_wall(model1) == ([20.0, 75.0, 110.0], [6.2, 5.9, 5.4])
    rows = {(r.split(" | ")[0].strip("| "), r.split(" | ")[1]): r.split(" | ")
            for r in scenarios.details(lines, "preemption")[2:]}
    # 160 updates in 110 s against the same model's 200 in 100 s at equal speed (seed 1);
    # model 0, never preempted: 150 in 100 s against 200
    assert rows[("lsgd-pre", "model1 (faulty)")][5] == "0.73"
    assert rows[("lsgd-pre", "model0")][5] == "0.75"
    # a launch.json that records every attempt's start: a restart after a failure counts too
    (run / "launch.json").write_text(json.dumps({"model1": {"started_at": [0.0, 60.0], "preemptions": []}}))
    model0, model1 = scenarios.Lines(study.load_study(runs)).get("preemption", "LocalSGD").runs[1]
    assert model1.restarted == [60.0] and model0.restarted == []


def rows_of(table):
    return [[c.strip() for c in r.strip("|").split("|")] for r in table[2:]]


def test_verdicts_name_the_measure_and_use_the_spread(runs, tmp_path):
    rows = rows_of(scenarios.verdicts(scenarios.Lines(study.load_study(runs))))
    # straggler: codistillation 15.5 ± 0.5 against async LocalSGD's 16.5: -1.0, not beyond
    # codistillation's spread 1.0, so level; at equal speed -2.0 with no spread: worse
    assert ["2x straggler", "the best asynchronous averaging (LocalSGD, asynchronous)",
            "level (-1.00, spread 1.00)", "level (+0.000, spread 0.000)", "1,2"] in rows
    assert ["equal speed", "the best asynchronous averaging (LocalSGD, asynchronous)",
            "worse (-2.00, spread 0.00)", "worse (+0.100, spread 0.000)", "1,2"] in rows
    # against the lone model at equal speed: 15 against 14, no spread: better
    assert ["equal speed", "the fast model alone", "better (+1.00, spread 0.00)",
            "better (-0.200, spread 0.000)", "1,2"] in rows


def test_lines_of_fewer_seeds_compare_on_the_seeds_both_ran(runs):
    b = {"budget": 100.0}
    write_line(runs, "regime", "codistill", 3, [(480, 100, 5.0, 15.0)] * 2, regime=True,
               alpha=0.1, gamma=1.1, interval=40, peer_layers=3)
    write_line(runs, "codi-slow", "codistill", 3, [(147, 100, 5.1, 30.0), (75, 100, 5.5, 12.0)],
               max_lead=0, alpha=0.1, interval=40, peer_layers=3, slowdown=2.0, **b)
    # a preemption run on seeds 1,2 for LocalSGD and on seed 3 for codistillation: no verdict
    for seed, name, kind, extra in ((1, "lsgd-async-pre", "localsgd", {"asynchronous": True}),
                                    (2, "lsgd-async-pre", "localsgd", {"asynchronous": True}),
                                    (3, "codi-pre", "codistill", {"max_lead": 0, "alpha": 0.1, "peer_layers": 3})):
        write_line(runs, name, kind, seed, [(150, 100, 5.0, 16.0)] * 2, interval=40, preempt=[30, 20], **extra, **b)
    lines = scenarios.Lines(study.load_study(runs))
    assert ["preemption", "the best asynchronous averaging (LocalSGD, asynchronous)", "-", "-",
            "none in common"] in rows_of(scenarios.verdicts(lines))
    # codistillation's seed 3 (BLEU 30) is left out against async LocalSGD (seeds 1, 2 only)
    assert ["2x straggler", "the best asynchronous averaging (LocalSGD, asynchronous)",
            "level (-1.00, spread 1.00)", "level (+0.000, spread 0.000)", "1,2"] in rows_of(scenarios.verdicts(lines))
    # the table's cells name their seeds where they are fewer than the table's three
    table = "\n".join(scenarios.which_method(lines))
    assert "| codistillation (never waits) | 15.00 ± 0.00 (seeds 1,2) | 20.33 ± 7.50 |" in table
    # goodput needs the same seed at equal speed: seed 3 has none
    rows = {r.split(" | ")[0].strip("| ") + r.split(" | ")[1]: r.split(" | ")
            for r in scenarios.details(lines, "straggler")[2:]}
    assert rows["codi-slowmodel0"][2] == "1,2,3" and rows["codi-slowmodel0"][5] == "0.98 ± 0.00 (seeds 1,2)"


def test_one_seed_gives_the_gap_and_no_verdict(tmp_path):
    runs = tmp_path / "runs"
    b = {"budget": 100.0, "slowdown": 2.0}
    write_line(runs, "codi-slow", "codistill", 1, [(147, 100, 5.1, 14.0)] * 2, max_lead=0, alpha=0.1,
               interval=40, peer_layers=3, **b)
    write_line(runs, "lsgd-slow", "localsgd", 1, [(120, 100, 5.2, 16.5)] * 2, interval=40, **b)
    rows = rows_of(scenarios.verdicts(scenarios.Lines(study.load_study(runs))))
    assert ["2x straggler", "LocalSGD", "-2.50", "-0.100", "1 (no verdict)"] in rows


def test_two_sizes_compare_codistillation_with_two_phase_kd_and_the_small_model_alone(runs, tmp_path):
    """A pair of a 3- and a 6-layer model is the sizes scenario, as is a kd line (its student
    alone is model 0); the small model alone is the equal-speed control."""
    b = {"budget": 100.0}
    for seed in (1, 2):
        write_line(runs, "codi-deep6", "codistill", seed, [(150, 100, 4.9, 16.0 + seed), (60, 100, 4.7, 18.0)],
                   max_lead=0, alpha=0.1, interval=40, peer_layers=6, **b)
        write_line(runs, "kd-deep6", "kd", seed, [(90, 50, 5.0, 15.0)], peer_layers=6, teacher_share=0.5,
                   kd_loss="kl", kd_alpha=1.0, interval=40, **b)
    lines = scenarios.Lines(study.load_study(runs))
    assert ("sizes", "two model sizes") in lines.scenarios
    assert "| method | equal speed | 2x straggler | two model sizes |" in "\n".join(scenarios.which_method(lines))
    rows = rows_of(scenarios.verdicts(lines))
    # codistilled small model 17.5 ± 0.5 against KD's 15.0: +2.5 beyond the spread 1.0
    assert ["two model sizes", scenarios.KD, "better (+2.50, spread 1.00)", "better (-0.100, spread 0.000)",
            "1,2"] in rows
    assert ["two model sizes", "the fast model alone", "better (+3.50, spread 1.00)",
            "better (-0.400, spread 0.000)", "1,2"] in rows
    details = {r.split(" | ")[0].strip("| ") + r.split(" | ")[1]: r for r in scenarios.details(lines, "sizes")[2:]}
    assert "codi-deep6model1 (big)" in details and "kd-deep6student" in details


def test_two_sizes_on_more_data_take_their_own_lone_models_and_state_the_premise(runs, tmp_path):
    """The sizes scenario on a quarter of the data: its small model alone is the control on
    that data, not the equal-speed one, and the control as deep as the big peer is the big
    model alone, against which the premise (big alone better than small alone) is judged."""
    quarter = {**SETTING, "fraction": 0.25}
    b = {"budget": 100.0}
    for seed in (1, 2):
        write_line(runs, "codi-deep6-f25", "codistill", seed, [(150, 100, 4.9, 16.0 + seed), (60, 100, 4.7, 18.0)],
                   setting=quarter, max_lead=0, alpha=0.1, interval=40, peer_layers=6, **b)
        write_line(runs, "kd-deep6-f25", "kd", seed, [(90, 50, 5.0, 15.0)], setting=quarter, peer_layers=6,
                   teacher_share=0.5, kd_loss="kl", kd_alpha=1.0, interval=40, **b)
        write_line(runs, "alone-f25", "control", seed, [(180, 100, 5.2, 13.0)], setting=quarter, **b)
        write_line(runs, "alone-l6-f25", "control", seed, [(90, 100, 5.0, 14.0 + seed)],
                   setting={**quarter, "layers": 6}, **b)
    # a step of the search for the premise, on the same data: shown with the scenario's lines
    write_line(runs, "alone-l9-f25", "control", 1, [(40, 100, 6.0, 7.0)], setting={**quarter, "layers": 9}, **b)
    # and a lone small model for 3W: a longer budget, so not the scenario's lone model
    write_line(runs, "alone-3W-f25", "control", 1, [(540, 300, 4.0, 19.0)], setting=quarter, budget=300.0)
    lines = scenarios.Lines(study.load_study(runs))
    assert lines.get("equal", scenarios.ALONE).name == "alone"
    assert lines.get("sizes", scenarios.ALONE).name == "alone-f25"
    assert lines.get("sizes", scenarios.BIG_ALONE).name == "alone-l6-f25"
    assert lines.get("equal", scenarios.BIG_ALONE) is None
    # the codistilled small model 17.5 ± 0.5 against 13.0 alone on the same data
    assert ["two model sizes", "the fast model alone", "better (+4.50, spread 1.00)",
            "better (-0.300, spread 0.000)", "1,2"] in rows_of(scenarios.verdicts(lines))
    assert "| the big model alone | - | - | 15.50 ± 0.50 |" in "\n".join(scenarios.which_method(lines))
    premise = " ".join(scenarios.premise(lines))
    assert "BLEU better (+2.50, spread 1.00), validation NLL better (-0.200, spread 0.000) (seeds 1,2)" in premise
    block = "\n".join(scenarios.readme_block(study.load_study(runs)))
    assert "| the fast model alone | 14.00 ± 0.00 | 14.00 ± 0.00 | not run | 13.00 ± 0.00 |" in block
    assert premise in block
    # no goodput against the equal-speed pair: the sizes pair's model 1 is another model
    details = scenarios.details(lines, "sizes")
    pair = [r for r in details if r.startswith("| codi-deep6-f25 |")]
    assert len(pair) == 2 and all(r.split(" | ")[5] == "-" for r in pair)
    assert any(r.startswith("| alone-l9-f25 | job | 1 | 100 | 40 | 1 |") for r in details)
    assert any(r.startswith("| alone-3W-f25 | job | 1 | 300 | 540 | 1 |") for r in details)
    assert not any(r.startswith("| alone-l9-f25 |") for r in scenarios.details(lines, "equal"))


def test_a_scenario_run_at_two_budgets_takes_the_longest_and_its_lone_models(runs):
    """The sizes pair for W and for 3W: the tables take the 3W line and the lone models
    trained for 3W; the W lines stay in the details."""
    quarter = {**SETTING, "fraction": 0.25}
    for budget, suffix in ((100.0, "W"), (300.0, "3W")):
        write_line(runs, f"codi-deep6-{suffix}", "codistill", 1, [(150, budget, 4.9, 16.0), (60, budget, 4.7, 18.0)],
                   setting=quarter, max_lead=0, alpha=0.1, interval=40, peer_layers=6, budget=budget)
        write_line(runs, f"alone-{suffix}", "control", 1, [(180, budget, 5.2, 13.0 if budget < 200 else 14.0)],
                   setting=quarter, budget=budget)
        write_line(runs, f"alone-l6-{suffix}", "control", 1, [(90, budget, 5.0, 10.0 if budget < 200 else 15.0)],
                   setting={**quarter, "layers": 6}, budget=budget)
    lines = scenarios.Lines(study.load_study(runs))
    assert [lines.get("sizes", m).name for m in (scenarios.CODISTILL, scenarios.ALONE, scenarios.BIG_ALONE)] == \
        ["codi-deep6-3W", "alone-3W", "alone-l6-3W"]
    assert "BLEU +1.00" in " ".join(scenarios.premise(lines))  # 15.0 against 14.0, one seed
    shown = [r.split(" | ")[0].strip("| ") for r in scenarios.details(lines, "sizes")[2:]]
    assert {"codi-deep6-W", "alone-W", "alone-l6-W"} <= set(shown)


def test_a_small_model_of_another_width_takes_its_own_lone_model_and_the_newest_line_wins(runs):
    """The search for the premise tried a small model of the regime's width, then a narrower
    one, both for the same budget: the tables take the newer line, whose small model alone is
    the control of its depth and width, and the premise names the two sizes."""
    quarter = {**SETTING, "fraction": 0.25}
    b = {"budget": 300.0}
    big = [(90, 300, 5.0, 15.0)]
    write_line(runs, "alone-l6", "control", 1, big, setting={**quarter, "layers": 6}, **b)
    # first the small model of the regime's width (1+1 layers), its lines run on the 1st
    for name, width, bleu, date in (("l1", None, 16.0, "2026-12-01T10:00:00Z"),
                                    ("l1-d128", 128, 11.0, "2026-12-07T10:00:00Z")):
        dim = {"dim": width} if width else {}
        env = {"env": {"cpu": "Test CPU", "precision": "bf16", "date": date}}
        write_line(runs, f"codi-{name}-deep6", "codistill", 1, [(400, 300, 4.9, bleu + 1), (90, 300, 5.0, 15.5)],
                   setting={**quarter, "layers": 1, **dim}, max_lead=0, alpha=0.1, interval=40,
                   peer_layers=6, **b, **env)
        write_line(runs, f"alone-{name}", "control", 1, [(500, 300, 5.5, bleu)],
                   setting={**quarter, "layers": 1, **dim}, **b, **env)
    lines = scenarios.Lines(study.load_study(runs))
    assert lines.get("sizes", scenarios.CODISTILL).name == "codi-l1-d128-deep6"
    assert lines.get("sizes", scenarios.ALONE).name == "alone-l1-d128"
    assert lines.get("sizes", scenarios.BIG_ALONE).name == "alone-l6"
    # 15.0 against 11.0; with the regime's width it would have been 15.0 against 16.0
    premise = " ".join(scenarios.premise(lines))
    assert "the big model alone (6+6 layers) against the small model alone (1+1 layers of width 128)" in premise
    assert "BLEU +4.00" in premise
    shown = [r.split(" | ")[0].strip("| ") for r in scenarios.details(lines, "sizes")[2:]]
    assert {"codi-l1-deep6", "alone-l1"} <= set(shown)
    # a pair of two widths is heterogeneous; a width given twice is not
    groups = {g.name: g for g in study.load_study(runs)}
    assert groups["codi-l1-d128-deep6"].model(0) == (1, 128) and groups["codi-l1-d128-deep6"].model(1) == (6, None)
    assert groups["codi-l1-d128-deep6"].heterogeneous
    same = study.Group("same", "codistill", {"layers": 1, "dim": 128, "peer_layers": 1, "peer_dim": 128}, ())
    assert not same.heterogeneous
    assert study.size((1, 128)) == "1+1 layers of width 128" and study.size((3, None)) == "3+3 layers"


def test_a_line_run_again_in_another_study_run_is_kept_apart(runs):
    write_line(runs / "rerun", "regime", "codistill", 1, [(480, 90, 4.8, 16.0)] * 2, regime=True,
               alpha=0.1, gamma=1.1, interval=40, peer_layers=3)
    groups = {g.name: g for g in study.load_study(runs)}
    assert sorted(groups["regime"].runs) == [1, 2] and sorted(groups["regime (rerun)"].runs) == [1]
    assert groups["regime"].stat(study.score("bleu", "last")).mean == 15.0
    assert study.regime_of(study.load_study(runs)).name == "regime"


def test_the_readmes_table_has_every_scenario_and_the_verdicts_naming_the_measure(runs, tmp_path):
    block = scenarios.readme_block(study.load_study(runs))
    assert block[0] == scenarios.BEGIN and block[-1] == scenarios.END
    text = "\n".join(block)
    assert "| method | equal speed | 2x straggler | preemption | two model sizes |" in text
    # the lone model stands in every scenario that ran; none ran preempted or with two sizes
    assert "| the fast model alone | 14.00 ± 0.00 | 14.00 ± 0.00 | not run | not run |" in text
    assert "| 2x straggler | the best asynchronous averaging (LocalSGD, asynchronous) | " \
           "level (-1.00, spread 1.00) | level (+0.000, spread 0.000) | 1,2 |" in text
    assert "| equal speed | the fast model alone | better (+1.00, spread 0.00) |" in text
    assert "| LocalSGD |" not in text.split("Codistillation (never waits) against")[1]  # the table's only
    assert "equal speed: Test CPU (seeds 1,2); 2x straggler: Test CPU (seeds 1,2)." in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{scenarios.BEGIN}\nold\n{scenarios.END}\n\nafter\n")
    assert scenarios.write_readme(readme, study.load_study(runs))
    assert readme.read_text() == "# x\n\n" + text + "\n\nafter\n"
    assert not scenarios.write_readme(readme, study.load_study(runs))  # the same: unchanged
    (tmp_path / "plain.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="--readme"):
        scenarios.write_readme(tmp_path / "plain.md", [])


def test_language_pairs_keep_their_lines_apart(runs, tmp_path):
    swedish = {**SETTING, "lang_pair": "sv-en"}
    for seed in (1, 2):
        write_line(runs / "sv", "codi-slow", "codistill", seed, [(140, 100, 4.0, 25.0 + seed)] * 2,
                   setting=swedish, max_lead=0, alpha=0.1, interval=40, peer_layers=3,
                   budget=100.0, slowdown=2.0)
    groups = study.load_study(runs)
    assert sorted(len(g.runs) for g in groups if g.name == "codi-slow") == [2, 2]
    text = "\n".join(scenarios.report(tmp_path, groups))
    german, swedish_part = text.split("\n### de-en\n")[1].split("\n### sv-en\n")
    assert "| codistillation (never waits) | 15.00 ± 0.00 | 15.50 ± 0.50 |" in german
    assert "| codistillation (never waits) | 26.50 ± 0.50 |" in swedish_part
    assert (tmp_path / "study_wall_sv-en_straggler.png").is_file()


def test_validation_is_placed_at_the_wall_time_of_its_update(runs):
    series = study.load_study(runs)[0].runs[1][0]  # the fast model alone: 180 updates, NLL 5.3
    assert scenarios.valid_by_wall(series) == ([50.0, 100.0], [6.3, 5.3])


def test_timed_lines_stay_out_of_the_map_and_w_is_the_regimes_wall(runs, tmp_path):
    text = study.write_study_report(tmp_path / "out", study.load_study(runs))
    map_part = text.split("## The map")[1]
    assert "| regime **(regime)** |" in map_part and "lsgd" not in map_part
    assert (tmp_path / "out" / "study_wall_de-en_straggler.png").is_file()
    assert study.regime_wall(runs / "regime" / "seed1") == 100.0


def test_exported_results_regenerate_the_same_page(runs, tmp_path, capsys):
    assert report.main(["--study", str(runs), "--export", str(tmp_path / "results")]) == 0
    kept = sorted(p.name for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert "train.log" not in kept and "train.json" in kept and "launch.json" in kept
    a = study.write_study_report(tmp_path / "a", study.load_study(runs))
    b = study.write_study_report(tmp_path / "b", study.load_study(tmp_path / "results"))
    assert a == b and "Test CPU, bf16 on cpu, torch 2.13.0" in b


def test_environment_names_the_cpu_precision_versions_and_commit():
    env = results.environment(precision="bf16", device="cpu", threads=2)
    assert env["precision"] == "bf16" and env["threads"] == 2 and env["torch"].startswith("2.")
    assert env["cpu"] and len(env["commit"].split("-")[0]) == 40 and env["date"].endswith("Z")


def test_the_lone_model_stands_at_equal_speed_where_no_other_line_ran(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_line(runs, "codi-slow", "codistill", seed, [(147, 100, 5.1, 14.0 + seed), (75, 100, 5.5, 12.0)],
                   max_lead=0, alpha=0.1, interval=40, peer_layers=3, slowdown=2.0, budget=100.0)
        write_line(runs, "alone", "control", seed, [(180, 100, 5.3, 14.0)], budget=100.0)
    table = "\n".join(scenarios.which_method(scenarios.Lines(study.load_study(runs))))
    assert "| method | equal speed | 2x straggler |" in table
    assert "| the fast model alone | 14.00 ± 0.00 | 14.00 ± 0.00 |" in table


def test_the_readmes_table_names_the_machine_of_each_scenarios_seeds(runs):
    """A column may join seeds run on different machines: the line under the table says
    which CPU ran which seeds, per scenario, from each run's study.json."""
    for name, kind, models, meta in (("codi-slow", "codistill", [(147, 100, 5.1, 15.0), (75, 100, 5.5, 12.0)],
                                      {"max_lead": 0, "peer_layers": 3, "slowdown": 2.0, "alpha": 0.1, "interval": 40}),
                                     ("alone", "control", [(180, 100, 5.3, 14.0)], {})):
        write_line(runs, name, kind, 3, models, budget=100.0, **meta)
        env = json.loads((runs / name / "seed3" / "study.json").read_text())
        env["env"]["cpu"] = "Other CPU"
        (runs / name / "seed3" / "study.json").write_text(json.dumps(env))
    text = "\n".join(scenarios.readme_block(study.load_study(runs)))
    assert "equal speed: Test CPU (seeds 1,2), Other CPU (seed 3); " \
           "2x straggler: Test CPU (seeds 1,2), Other CPU (seed 3)." in text
