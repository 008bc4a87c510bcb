"""fairseq_codistill.tools.logs: the one parser of fairseq's JSON log lines."""
from fairseq_codistill.tools import logs


def test_log_records_of_cross_entropy_get_their_nll():
    """fairseq's cross_entropy logs the NLL as loss alone; the parser names it nll_loss."""
    tag, record = logs.parse_line(
        '2026-12-01 | INFO | valid | {"epoch": 3, "valid_loss": "5.572", "valid_num_updates": "480"}')
    assert tag == "valid" and record == {"epoch": 3, "loss": 5.572, "nll_loss": 5.572, "num_updates": 480}
    _, smoothed = logs.parse_line('x | train | {"train_loss": "6.1", "train_nll_loss": "5.2"}')
    assert smoothed == {"loss": 6.1, "nll_loss": 5.2}
    assert logs.parse_line('x | train_inner | {"loss": "6.') is None  # still being written


def test_last_value_and_the_command_line(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text('t | train_inner | {"num_updates": "20", "loss": "7.5"}\n'
                   't | valid | {"valid_nll_loss": "6.25", "valid_num_updates": "20"}\n'
                   't | train_inner | {"num_updates": "40", "loss": "6.5"}\n')
    assert logs.last_value(log.read_text(), "train_inner", "num_updates") == 40
    assert logs.main([str(log), "valid", "nll_loss"]) == 0
    assert capsys.readouterr().out == "6.25\n"
    assert logs.main([str(tmp_path / "missing.log"), "valid", "nll_loss"]) == 0
    assert capsys.readouterr().out == ""
    assert logs.main([str(log), "bogus", "loss"]) == 2
    # several figures of one log in one call, "-" for one it does not have yet
    assert logs.main([str(log), "train_inner", "num_updates", "valid", "nll_loss", "valid", "bleu"]) == 0
    assert capsys.readouterr().out == "40 6.25 -\n"
    assert logs.main([str(log), "train_inner"]) == 2
