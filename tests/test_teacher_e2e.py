"""fairseq-codistill-teacher: a trained checkpoint published as a fixed peer, and a student
of another depth distilling from it (the two-phase alternative to codistillation)."""
import hashlib

import pytest

from conftest import TINY_TRAIN, json_logs, run, tool
from test_codistill_e2e import loaded_from

pytestmark = pytest.mark.e2e


def digest(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_a_student_distils_from_a_published_checkpoint_that_never_changes(data_bin, tmp_path):
    # the teacher: 3+3 layers, plain fairseq translation, 20 updates
    run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--encoder-layers", "3", "--decoder-layers", "3",
         "--task", "translation", "--criterion", "cross_entropy", "--max-update", "20",
         "--save-dir", tmp_path / "teacher"], timeout=300)
    proc = run([tool("fairseq-codistill-teacher"), tmp_path / "teacher" / "checkpoint_last.pt",
                "--codistill-dir", tmp_path / "x"])
    snapshot = tmp_path / "x" / "model1" / "snapshot-0000000020.cds"
    assert f"as model 1: {tmp_path / 'x'}/model1/snapshot-0000000020.cds" in proc.stdout
    before = digest(snapshot)

    # the student: 2+2 layers, model 0 of 2, word-level KD (KL to the teacher's distribution)
    proc = run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--task", "codistill_translation",
                "--criterion", "codistill_ce", "--codistill-dir", tmp_path / "x", "--codistill-id", "0",
                "--codistill-num-models", "2", "--codistill-interval", "5", "--codistill-loss", "kl",
                "--codistill-alpha-schedule", "constant", "--codistill-alpha", "1",
                "--max-update", "15", "--save-dir", tmp_path / "student"], timeout=300)
    log = proc.stdout + proc.stderr
    # read once, at the start, and never replaced: no job publishes as model 1
    assert loaded_from(log) == [(1, 20)]
    inner = json_logs(log)
    assert [r["num_updates"] for r in inner] == [5, 10, 15]
    # the teacher is read in the background and swapped in at a step or two from the start
    assert 0 < inner[0]["num_peers"] < 1 and [r["num_peers"] for r in inner[1:]] == [1, 1]
    assert all(r["alpha"] == 1 for r in inner)
    # the student comes closer to the teacher: the KL penalty falls at every log interval
    penalty = [r["codistill_loss"] for r in inner]
    assert penalty[0] > penalty[1] > penalty[2] > 0
    # our update minus the teacher's 20: below 0 all along, and one log interval more each time
    stale = [r["peer_staleness"] for r in inner]
    assert all(s < 0 for s in stale) and [b - a for a, b in zip(stale, stale[1:])] == [5, 5]
    assert digest(snapshot) == before
    assert (tmp_path / "student" / "checkpoint_last.pt").is_file()


def test_a_checkpoint_without_its_dictionary_is_refused_naming_the_flag(data_bin, tmp_path):
    run([tool("fairseq-train"), data_bin, *TINY_TRAIN, "--task", "translation", "--max-update", "5",
         "--save-dir", tmp_path / "teacher"], timeout=300)
    proc = run([tool("fairseq-codistill-teacher"), tmp_path / "teacher" / "checkpoint_last.pt",
                "--codistill-dir", tmp_path / "x", "--data", tmp_path / "nowhere"], check=False)
    assert proc.returncode == 2
    assert f"--data: {tmp_path / 'nowhere'} is not a directory" in proc.stderr
    assert not (tmp_path / "x" / "model1").exists()
