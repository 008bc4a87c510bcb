"""CodistillSeq2SeqTrainer on a tiny Marian model built from a config, on the CPU: two
processes through a directory and through s3://, the penalty against a hand computation,
alpha 0 against a plain Seq2SeqTrainer, a resumed run, torchrun, bad keywords."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (make install)")
pytest.importorskip("accelerate", reason="accelerate is not installed (make install)")
import torch  # noqa: E402

from conftest import cpu_env, record_figure  # noqa: E402
from hf_tiny import collate, tiny_marian, toy_pairs, training_args  # noqa: E402

TINY = str(Path(__file__).with_name("hf_tiny.py"))
pytestmark = pytest.mark.e2e


def start(tmp_path, directory, model_id, *settings, runner=(sys.executable,)):
    out = tmp_path / f"out{model_id}"
    for stale in out.glob("result-rank*.json"):  # a resumed run writes its own
        stale.unlink()
    proc = subprocess.Popen([*runner, TINY, str(out), str(directory), str(model_id), *settings],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cpu_env(), cwd=tmp_path)
    proc.out_dir = out
    return proc


def finish(proc, timeout=300):
    """The result every rank of the job wrote (hf_tiny.main), by rank."""
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log[-4000:]
    results = [json.loads(p.read_text()) for p in sorted(proc.out_dir.glob("result-rank*.json"))]
    assert results, f"no rank wrote a result under {proc.out_dir}:\n{log[-4000:]}"
    return results


def training_logs(result):
    return [r for r in result["log"] if "loss" in r]


@pytest.mark.parametrize("where", ["dir", "s3"])
def test_two_trainers_codistill(tmp_path, request, where):
    directory = tmp_path / "x" if where == "dir" else request.getfixturevalue("s3_url")
    procs = [start(tmp_path, directory, i, "codistill_wait_for_peers=120", "codistill_max_lead=5")
             for i in (0, 1)]
    for proc in procs:
        (result,) = finish(proc)
        logs = training_logs(result)
        assert logs[-1]["codistill_loss"] > 0 and logs[-1]["num_peers"] == 1  # the penalty at the end
        assert {"alpha", "peer_staleness", "codistill_bytes"} <= set(logs[-1])
        assert logs[-1]["alpha"] == pytest.approx(1.1)  # epoch 2: 1.0 x 1.1
        assert logs[-1]["peer_staleness"] <= 10  # max lead 5 + interval 5
    record_figure("hugging face", f"two CodistillSeq2SeqTrainer jobs through {where}",
                  f"codistill_loss at step 30: {logs[-1]['codistill_loss']:.4f}, num_peers 1")


def test_the_penalty_and_its_gradient_are_the_masked_mse_of_the_logits(tmp_path):
    from fairseq_codistill.integrations.hf import CodistillSeq2SeqTrainer
    from fairseq_codistill.codistillation import Codistillation

    model, peer = tiny_marian(0), tiny_marian(1).eval()
    trainer = CodistillSeq2SeqTrainer(model=model, args=training_args(tmp_path / "o"),
                                      train_dataset=toy_pairs(), data_collator=collate,
                                      codistill_dir=str(tmp_path / "x"), codistill_id=0, codistill_alpha=0.5)
    trainer.codistillation = Codistillation(model, codistill_dir=str(tmp_path / "x"), codistill_id=0,
                                            codistill_alpha=0.5, codistill_peer_dtype="same")
    trainer.codistillation.exchange.peers[1].model, trainer.codistillation.exchange.peers[1].num_updates = peer, 0
    try:
        batch = collate(toy_pairs(4, seed=3))
        model.eval()
        model.training = True  # no dropout, but the training branch
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=None)
        grads = torch.autograd.grad(loss, [model.model.decoder.layers[0].fc1.weight, model.model.shared.weight])
        # by hand: the model's cross-entropy + 0.5 x the sum over label positions that count
        # of mean_V (own - peer)^2, divided by their number
        out = model(**batch)
        mask = batch["labels"].ne(-100)
        decoder = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        with torch.no_grad():
            peer_logits = peer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               decoder_input_ids=decoder).logits
        mse = ((out.logits - peer_logits) ** 2).mean(-1)[mask].sum() / mask.sum()
        expected = out.loss + 0.5 * mse
        assert mse.item() > 0 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
        for got, want in zip(grads, torch.autograd.grad(expected, [model.model.decoder.layers[0].fc1.weight, model.model.shared.weight])):
            assert torch.allclose(got, want, atol=1e-6)
    finally:
        model.training = False
        trainer.codistillation.close()


def test_at_alpha_zero_the_losses_are_a_plain_trainers(tmp_path):
    """The exchange runs (model 1's snapshots are there and model 0 loads them), the
    penalty does not: the logged losses equal a plain Seq2SeqTrainer's, digit for digit."""
    finish(start(tmp_path, tmp_path / "x", 1, "codistill_alpha=0"))  # publishes, alone
    (codistilled,) = finish(start(tmp_path, tmp_path / "x", 0, "codistill_alpha=0"))
    (tmp_path / "p").mkdir()
    (plain,) = finish(start(tmp_path / "p", "-", 0, "plain=true"))
    ours, theirs = training_logs(codistilled), training_logs(plain)
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs] and len(ours) == 6
    assert ours[-1]["num_peers"] == 1 and ours[-1]["codistill_loss"] == 0  # a peer, no penalty


def test_a_resumed_run_continues_alpha_and_the_exchange(tmp_path):
    peer = start(tmp_path, tmp_path / "x", 1, "codistill_wait_for_peers=120", "codistill_max_lead=5")
    first = start(tmp_path, tmp_path / "x", 0, "codistill_wait_for_peers=120", "codistill_max_lead=5",
                  "args_max_steps=30")
    (done,) = finish(first)
    finish(peer)
    saved = torch.load(tmp_path / "out0" / "checkpoint-20" / "codistill_state.pt", weights_only=True)
    # saved after step 20: the peer snapshot model 0 had loaded by then. --codistill-max-lead 5
    # bounds it both ways: model 0 waits at 15 for update 10 or newer, and model 1 cannot pass
    # model 0's newest snapshot (20, published at step 20) by more than 5. Model 1 publishes
    # each snapshot before it checks on model 0, so 20 (a fresh clone's run) and 25 (a full
    # suite's run) have both been seen.
    assert saved["peer_versions"]["1"] in (10, 15, 20, 25) and saved["progress"]["num_updates"] == 19
    shutil.rmtree(tmp_path / "out0" / "checkpoint-30")  # as if it had died after step 20
    (resumed,) = finish(start(tmp_path, tmp_path / "x", 0, "resume=true", "args_max_steps=30"))
    before = {r["step"]: r for r in training_logs(done)}
    after = {r["step"]: r for r in training_logs(resumed)}
    assert sorted(after) == [5, 10, 15, 20, 25, 30]  # the history up to 20 is the checkpoint's
    for step in (25, 30):  # alpha where the uninterrupted run had it, bytes counted on
        assert after[step]["alpha"] == before[step]["alpha"] == pytest.approx(1.1)
        assert after[step]["codistill_bytes"] >= saved["bytes_read"] > 0
        assert after[step]["num_peers"] == 1


def test_under_torchrun_only_rank_0_publishes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    model0 = start(tmp_path, tmp_path / "x", 0, "codistill_wait_for_peers=120", "codistill_max_lead=5",
                   runner=(torchrun, "--standalone", "--nproc-per-node", "2"))
    model1 = start(tmp_path, tmp_path / "x", 1, "codistill_wait_for_peers=120", "codistill_max_lead=5")
    ranks = {r["rank"]: r for r in finish(model0, timeout=600)}
    finish(model1)
    lease = json.loads((tmp_path / "x" / "model0" / "lease.json").read_text())
    assert sorted(ranks) == [0, 1] and lease["pid"] == ranks[0]["pid"]
    assert training_logs(ranks[0])[-1]["codistill_loss"] > 0
    snapshots = sorted(p.name for p in (tmp_path / "x" / "model0").glob("snapshot-*.cds"))
    assert snapshots == ["snapshot-0000000020.cds", "snapshot-0000000025.cds"]


@pytest.mark.parametrize("keywords, message", [
    ({"codistill_id": 2}, r"^codistill_id must be in \[0, codistill_num_models\)"),
    ({"codistill_num_models": 1}, r"^codistill_num_models must be >= 2"),
    ({"codistill_dir": None}, r"^codistill_dir is required"),
    ({"codistill_interval": 0}, r"^codistill_interval must be > 0"),
])
def test_bad_keywords_fail_before_training_naming_the_keyword(tmp_path, keywords, message):
    from fairseq_codistill.integrations.hf import CodistillSeq2SeqTrainer

    kw = {"codistill_dir": str(tmp_path / "x"), "codistill_id": 0, "codistill_num_models": 2,
          "codistill_interval": 5, "codistill_alpha": 0.1, **keywords}
    kw = {k: v for k, v in kw.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        CodistillSeq2SeqTrainer(model=tiny_marian(), args=training_args(tmp_path / "o"),
                                train_dataset=toy_pairs(8), data_collator=collate, **kw)
    assert not (tmp_path / "o").exists()
