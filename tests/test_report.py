"""fairseq-codistill-report on hand-written fairseq logs, and the eval.json it reads
(fairseq_codistill.tools.evaluate) on hand-written fairseq-generate output."""
import json

import pytest

from fairseq_codistill.tools import evaluate, report
from fairseq_codistill.tools import runs as runlogs

T = "2026-01-01 00:00:00 | INFO |"
CONFIG = (f"{T} fairseq_cli.train | {{'_name': None, 'distributed_training': {{'_name': None, "
          "'distributed_world_size': 1, 'distributed_rank': 0}, 'dataset': {'_name': None, "
          "'max_tokens': 1024, 'batch_size': None}, 'optimization': {'_name': None, 'max_update': 20, "
          "'update_freq': [2], 'lr': [0.001]}, 'criterion': {'_name': '%s'%s, 'sentence_avg': False}}")


def record(tag, **values):
    return f"{T} {tag} | " + json.dumps({k: str(v) for k, v in values.items()})


BASELINE_LOG = "\n".join([
    CONFIG % ("label_smoothed_cross_entropy", ", 'label_smoothing': 0.1"),
    f"{T} fairseq_cli.train | num. shared model params: 1,000 (num. trained: 1,000)",
    record("train_inner", epoch=1, loss=6.0, nll_loss=5.5, num_updates=10, wall=20),
    record("valid", epoch=1, valid_loss=5.4, valid_nll_loss=5.0, valid_num_updates=10),
    record("train_inner", epoch=1, loss=5.2, nll_loss=4.6, num_updates=20, wall=40),
    record("valid", epoch=1, valid_loss=4.4, valid_nll_loss=4.0, valid_num_updates=20),
    record("train", epoch=1, train_loss=5.5, train_nll_loss=5.0, train_num_updates=20, train_wall=41),
    f"{T} fairseq_cli.train | done training in 42.0 seconds",
]) + "\n"


def codistill_inner(update, loss, nll, penalty, alpha, nbytes, dist, wall):
    return record("train_inner", epoch=1, loss=loss, nll_loss=nll, codistill_loss=penalty,
                  alpha=alpha, num_peers=1, codistill_bytes=nbytes, param_dist=dist,
                  num_updates=update, wall=wall)


MODEL0_LOG = "\n".join([
    "=== fairseq-codistill-launch: start of model 0",
    CONFIG % ("codistill_ce", ", 'codistill_alpha': 1.0"),
    f"{T} fairseq_cli.train | num. shared model params: 1,000 (num. trained: 1,000)",
    codistill_inner(10, 6.2, 5.8, 0.4, 1.0, 409867, 1.5, 25),
    record("valid", epoch=1, valid_loss=5.1, valid_nll_loss=5.1, valid_num_updates=10),
    codistill_inner(20, 5.0, 4.7, 0.3, 1.0, 819734, 2.25, 50),
    record("valid", epoch=1, valid_loss=3.9, valid_nll_loss=3.9, valid_num_updates=20),
    record("train", epoch=1, train_loss=5.6, train_nll_loss=5.25, train_codistill_loss=0.35,
           train_num_updates=20, train_wall=51),
    f"{T} fairseq_cli.train | done training in 52.5 seconds",
]) + "\n"

# Still running: restarted once (update 10 logged twice: the later record counts), no
# epoch or valid record yet, and a last line half written.
MODEL1_LOG = "\n".join([
    codistill_inner(10, 9.9, 9.9, 0.9, 1.0, 0, 1.0, 24),
    "=== fairseq-codistill-launch: restart 1 of model 1",
    codistill_inner(10, 6.4, 6.0, 0.5, 1.0, 409867, 1.4, 30),
    codistill_inner(15, 5.8, 5.5, 0.45, 1.1, 614800, 1.9, 44),
    f'{T} train_inner | {{"epoch": 1, "loss": "5.',
])


@pytest.fixture
def runs(tmp_path):
    base = tmp_path / "baseline"
    base.mkdir()
    (base / "train.log").write_text(BASELINE_LOG)
    (base / "eval.json").write_text(json.dumps({"bleu": 11.25, "valid_nll": 4.0, "split": "test"}))
    codistill = tmp_path / "codistill"
    for i, log in enumerate([MODEL0_LOG, MODEL1_LOG]):
        (codistill / f"model{i}").mkdir(parents=True)
        (codistill / f"model{i}" / "train.log").write_text(log)
    (codistill / "model0" / "eval.json").write_text(json.dumps({"bleu": 12.5, "chrf": 40.5, "valid_nll": 3.9}))
    (codistill / "ensemble").mkdir()
    (codistill / "ensemble" / "eval.json").write_text(json.dumps({"bleu": 14.0, "valid_nll": 3.6}))
    (tmp_path / "exchange" / "model0").mkdir(parents=True)  # not a run: no train.log
    return base, codistill


def rows_by_label(rows):
    return {r.label: r for r in rows}


def test_table_values(runs, tmp_path):
    base, codistill = runs
    series = runlogs.load_run(base) + runlogs.load_run(codistill)
    rows = rows_by_label(report.table_row(s, allreduce_workers=2) for s in series)
    assert list(rows) == ["baseline", "codistill/model0", "codistill/model1", "codistill/ensemble"]

    b = rows["baseline"]
    # the epoch record and the last train_inner are both at update 20: the epoch average wins
    assert (b.updates, b.train_loss, b.train_nll, b.valid_nll, b.bleu, b.wall) == (20, 5.5, 5.0, 4.0, 11.25, 42.0)
    # ring all-reduce of 2 workers: 2 * (2-1)/2 * 4 bytes * 1000 params * 20 updates
    assert b.bytes == 80_000

    m0 = rows["codistill/model0"]
    assert (m0.updates, m0.train_loss, m0.train_nll, m0.valid_nll, m0.bleu, m0.wall) == (20, 5.6, 5.25, 3.9, 12.5, 52.5)
    assert m0.bytes == 819734  # read from the peer, whatever --allreduce-workers says

    m1 = rows["codistill/model1"]  # in progress: the newest train_inner, no validation yet
    assert (m1.updates, m1.train_loss, m1.train_nll, m1.valid_nll, m1.bleu, m1.wall) == (15, 5.8, 5.5, None, None, 44)
    assert m1.bytes == 614800

    e = rows["codistill/ensemble"]
    assert (e.updates, e.valid_nll, e.bleu, e.bytes, e.wall) == (None, 3.6, 14.0, None, None)


def test_single_process_baseline_exchanges_nothing_without_allreduce_workers(runs):
    base, _ = runs
    assert report.table_row(runlogs.load_run(base)[0]).bytes == 0


def test_a_model_trained_alone_is_not_counted_as_allreduce_workers(tmp_path):
    """--allreduce-workers 2 stands for the run that sums 2 batches per update, not for a
    lone control of one batch per update next to it."""
    control = tmp_path / "control"
    control.mkdir()
    (control / "train.log").write_text(BASELINE_LOG.replace("'update_freq': [2]", "'update_freq': [1]"))
    series = runlogs.load_run(control)[0]
    assert series.setup["update_freq"] == 1
    assert report.table_row(series, allreduce_workers=2).bytes == 0


def test_setup_is_read_from_the_config_dump(runs):
    base, codistill = runs
    b, m0 = runlogs.load_run(base)[0], runlogs.load_run(codistill)[0]
    assert b.setup == {"params": 1000, "world_size": 1, "max_tokens": 1024, "update_freq": 2,
                       "criterion": "label_smoothed_cross_entropy", "label_smoothing": 0.1}
    assert m0.setup["criterion"] == "codistill_ce" and m0.setup["label_smoothing"] == 0.0
    assert "label smoothing 0.1" in report.setup_line(b)
    assert "up to 2,048 tokens per update" in report.setup_line(b)  # 1024 x 1 worker x update-freq 2


def test_curves_keep_the_last_record_of_an_update(runs):
    _, codistill = runs
    model1 = runlogs.load_run(codistill)[1]
    assert runlogs.curve(model1.inner, "nll_loss") == ([10.0, 15.0], [6.0, 5.5])
    assert runlogs.curve(model1.inner, "alpha") == ([10.0, 15.0], [1.0, 1.1])


def test_report_folder(runs, tmp_path, capsys):
    base, codistill = runs
    out = tmp_path / "report"
    assert report.main([str(base), str(codistill), "--out", str(out), "--allreduce-workers", "2"]) == 0
    md = (out / "report.md").read_text()
    assert "| baseline | 20 | 5.500 | 5.000 | 4.000 | 11.25 | - | 80.0 KB | 0m42s |" in md
    assert "| codistill/model0 | 20 | 5.600 | 5.250 | 3.900 | 12.50 | 40.50 | 819.7 KB | 0m52s |" in md
    assert "| codistill/model1 | 15 | 5.800 | 5.500 | - | - | - | 614.8 KB | 0m44s |" in md
    assert "| codistill/ensemble | - | - | - | 3.600 | 14.00 | - | - | - |" in md
    assert "base 2" in md
    for png in ("loss.png", "codistill.png", "param_dist.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({png})" in md
    terminal = capsys.readouterr().out
    assert "codistill/ensemble" in terminal and "3.600" in terminal


def test_the_summary_calls_a_result_better_only_in_the_measure_where_it_is():
    """The demo's closing lines: codistillation below the lone model in NLL but behind it in
    BLEU is better in one and worse in the other, never 'better' as a whole."""
    rows = [report.Row("run/model0", valid_nll=5.44, bleu=14.7), report.Row("run/model1", valid_nll=5.43, bleu=15.3),
            report.Row("control", valid_nll=5.565, bleu=15.57), report.Row("baseline", valid_nll=5.519, bleu=20.66)]
    lines = report.comparison(rows)
    # mean NLL 5.435, mean BLEU 15.0: -0.130 and -0.57 against the lone model
    assert lines[0] == "codistilled models: mean val NLL 5.435 over 2 (best 5.430), mean BLEU 15.00"
    assert lines[1] == ("vs the same model trained alone (control, 5.565, BLEU 15.57): "
                        "val NLL -0.130 (better); BLEU -0.57 (worse)")
    assert lines[2] == "vs all-reduce (baseline, 5.519, BLEU 20.66): val NLL -0.084 (better); BLEU -5.66 (worse)"
    rows[2].bleu = 15.0
    assert report.comparison(rows)[1].endswith("BLEU +0.00 (level)")


def test_a_model_that_never_had_a_peer_is_called_out(runs, tmp_path, capsys):
    _, codistill = runs
    report.main([str(codistill), "--out", str(tmp_path / "a")])
    assert "WARNING" not in capsys.readouterr().out  # both read a peer
    # model 1 finishes with num_peers 0 in every record; model 0's log says so itself
    alone = MODEL0_LOG.replace('"num_peers": "1"', '"num_peers": "0"')
    (codistill / "model1" / "train.log").write_text(alone)
    (codistill / "model0" / "train.log").write_text(
        MODEL0_LOG + f"{T} fairseq_codistill.exchange.peers | codistill: model 0 trained without any "
        "peer: no peer snapshot was loaded in 20 updates\n")
    report.main([str(codistill), "--out", str(tmp_path / "b")])
    terminal = capsys.readouterr().out
    md = (tmp_path / "b" / "report.md").read_text()
    for label in ("codistill/model0", "codistill/model1"):
        assert f"WARNING: {label} trained without any peer" in terminal
        assert f"**WARNING: {label} trained without any peer" in md


def test_baseline_alone_has_no_codistill_plots(runs, tmp_path):
    base, _ = runs
    report.write_report(tmp_path / "r", runlogs.load_run(base))
    assert (tmp_path / "r" / "loss.png").stat().st_size > 0
    assert not (tmp_path / "r" / "codistill.png").exists()
    assert "codistill.png" not in (tmp_path / "r" / "report.md").read_text()


def test_a_directory_without_logs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no train.log and no model"):
        report.main([str(tmp_path)])


def test_human_units():
    assert runlogs.human_bytes(999) == "999 B"
    assert runlogs.human_bytes(80_000) == "80.0 KB"
    assert runlogs.human_bytes(2.5e9) == "2.5 GB"
    assert runlogs.human_seconds(42.4) == "0m42s"
    assert runlogs.human_seconds(3725) == "1h02m"


# -- eval.json -----------------------------------------------------------------------
GENERATE = """S-1\t▁Guten ▁Tag
T-1\t▁good ▁day
H-1\t-0.5\t▁good ▁day
D-1\t-0.5\tgood day to you all
P-1\t-0.2 -0.3 -1.0
S-0\t▁Datei ▁öffnen
H-0\t-0.1\t▁open ▁the ▁file
D-0\t-0.1\topen the file now please
P-0\t-1.0 -2.0
Generate test with beam=4: BLEU4 = 12.34
"""


def test_hypotheses_by_sentence_id(tmp_path):
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE)
    assert evaluate.hypotheses(gen) == {0: "open the file now please", 1: "good day to you all"}


def test_reference_nll_is_per_token_base_2(tmp_path):
    gen = tmp_path / "score.txt"
    gen.write_text(GENERATE)
    # P- lines are base-2 log-probabilities: -(-0.2 - 0.3 - 1.0 - 1.0 - 2.0) / 5 tokens
    assert evaluate.reference_nll(gen) == pytest.approx(4.5 / 5)


def test_eval_json(tmp_path):
    gen, ref, out = tmp_path / "gen.txt", tmp_path / "test.en", tmp_path / "eval.json"
    gen.write_text(GENERATE)
    ref.write_text("open the file now please\ngood day to you all\n")
    assert evaluate.main(["--generate", str(gen), "--reference", str(ref), "--score-reference",
                          str(gen), "--checkpoint", "m.pt", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["bleu"] == 100.0 and result["valid_nll"] == 0.9
    assert (result["split"], result["num_sentences"], result["checkpoint"]) == ("test", 2, "m.pt")
    assert result["sacrebleu"].startswith("nrefs:1")


def test_eval_of_the_same_checkpoint_takes_its_scores(tmp_path):
    gen, ref, out = tmp_path / "gen.txt", tmp_path / "test.en", tmp_path / "eval.json"
    gen.write_text(GENERATE)
    ref.write_text("open the file now please\ngood day to you all\n")
    evaluate.main(["--generate", str(gen), "--reference", str(ref), "--checkpoint", "last.pt",
                   "--out", str(out)])
    best = tmp_path / "eval-best.json"
    assert evaluate.main(["--same-as", str(out), "--checkpoint", "best.pt", "--out", str(best)]) == 0
    result = json.loads(best.read_text())
    assert (result["bleu"], result["checkpoint"], result["same_as"]) == (100.0, "best.pt", "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-best.json", "eval.json", "gen.txt", "test.en"]
    with pytest.raises(SystemExit):  # scores come from one place
        evaluate.main(["--same-as", str(out), "--generate", str(gen), "--out", str(best)])


def test_eval_refuses_missing_hypotheses(tmp_path):
    gen, ref = tmp_path / "gen.txt", tmp_path / "test.en"
    gen.write_text(GENERATE)
    ref.write_text("open the file now please\ngood day to you all\none more\n")
    with pytest.raises(SystemExit, match="2 hypotheses for 3 references"):
        evaluate.main(["--generate", str(gen), "--reference", str(ref), "--out", str(tmp_path / "e.json")])


def test_a_demo_run_is_kept_as_data_and_fills_the_readme_block(runs, tmp_path, capsys):
    """--export copies plain runs' small files (no train.log); --readme fills the demo block
    from them, the same as from the runs themselves, naming the machine of their env.json."""
    base, codistill = runs
    env = {"cores": 2, "cpu": "Test CPU", "precision": "bf16", "device": "cpu", "torch": "2.13.0",
           "fairseq": "0.12.3.1"}
    for run in runs:
        (run / "env.json").write_text(json.dumps(env))
    kept = tmp_path / "results" / "demo"
    assert report.main([str(base), str(codistill), "--export", str(kept)]) == 0
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == ["baseline/env.json", "baseline/eval.json", "baseline/train.json",
                     "codistill/ensemble/eval.json", "codistill/env.json", "codistill/model0/eval.json",
                     "codistill/model0/train.json", "codistill/model1/train.json"]
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.DEMO_BEGIN}\nold text\n{report.DEMO_END}\nafter\n")
    assert report.main([str(kept / "baseline"), str(kept / "codistill"), "--allreduce-workers", "2",
                        "--readme", str(readme), "--out", str(tmp_path / "r")]) == 0
    # model1 was never evaluated and logged no validation: the mean is model0's alone
    assert readme.read_text() == "\n".join([
        "# x", "", "before", report.DEMO_BEGIN, "",
        "On a 2-core Test CPU, bf16 on cpu (torch 2.13.0, fairseq 0.12.3.1), it printed:", "",
        "    codistilled models: mean val NLL 3.900 over 1 (best 3.900), mean BLEU 12.50",
        "      vs all-reduce (baseline, 4.000, BLEU 11.25): val NLL -0.100 (better); BLEU +1.25 (better)",
        "", report.DEMO_END, "after", ""])
    generated = readme.read_text()
    assert report.main([str(base), str(codistill), "--allreduce-workers", "2", "--readme", str(readme),
                        "--out", str(tmp_path / "r")]) == 0
    assert readme.read_text() == generated and "demo block unchanged" in capsys.readouterr().out


def test_the_demo_block_refuses_a_readme_without_markers_and_export_a_folder_without_logs(runs, tmp_path):
    base, codistill = runs
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="report: --readme .*README.md: no '<!-- demo: generated"):
        report.main([str(base), str(codistill), "--readme", str(readme), "--out", str(tmp_path / "r")])
    assert readme.read_text() == "# no markers\n"
    with pytest.raises(SystemExit, match="--export: no train.log and no model.*/train.log in .*exchange"):
        report.main([str(base), str(tmp_path / "exchange"), "--export", str(tmp_path / "kept")])
    assert not (tmp_path / "kept").exists()


def test_the_demo_block_says_so_where_the_runs_recorded_no_machine():
    rows = [report.Row("codistill/model0", valid_nll=5.0, bleu=10.0), report.Row("control", valid_nll=5.1, bleu=11.0)]
    assert report.demo_block(rows, [])[:2] == ["", "On a machine its runs did not record, it printed:"]
    with pytest.raises(ValueError, match="no codistilled models beside a control or a baseline"):
        report.demo_block(rows[1:], [])
