"""Codistillation, the public object for any PyTorch loop: the README's loop in two
processes, its penalty against a hand computation, its errors, its state, averaging."""
import concurrent.futures
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, cpu_env
from fairseq_codistill import Codistillation

# What the README's loop needs around it: a model per process, its data (one task for
# both, its own batches), an optimizer. Then the loop, as the README shows it.
PREAMBLE = """
import json, sys, torch
import torch.nn.functional as F
model_id = int(sys.argv[1])
torch.manual_seed(100 + model_id)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
task = torch.randn(8, 4, generator=torch.Generator().manual_seed(7))
data = torch.Generator().manual_seed(model_id)
batches = [(x, (x @ task).argmax(-1)) for x in (torch.randn(16, 8, generator=data) for _ in range(300))]
updates_per_epoch = 100
"""
EPILOGUE = """
print(json.dumps({"loads": codistill.exchange.num_loads, "penalty": penalty.item(),
                  "alpha": codistill.alpha, **codistill.metrics()}))
"""


def readme_loop() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- the loop below runs as written in tests/test_codistillation.py[^>]*-->\n"
                      r"```python\n(.*?)```", text, re.S)
    assert found, "the README's plain PyTorch loop is gone"
    return found.group(1)


def test_the_readme_loop_codistills_two_processes(tmp_path):
    code = PREAMBLE + readme_loop() + EPILOGUE
    assert len(readme_loop().strip().splitlines()) <= 14  # about ten lines
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=tmp_path, env=cpu_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        # both exchanged at updates 100 and 200 (the first waited for the other) and
        # trained with the penalty at the end; alpha grew 1.1x per epoch: 0.1 x 1.1^2
        assert r["loads"] >= 1 and r["num_peers"] == 1 and r["penalty"] > 0
        assert r["alpha"] == pytest.approx(0.121) and r["codistill_bytes"] > 0
    assert sorted((tmp_path / "runs" / "x").iterdir()) == [tmp_path / "runs" / "x" / f"model{i}" for i in (0, 1)]


def small_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_the_penalty_is_alpha_times_the_mse_of_the_logits(tmp_path):
    model, peer = small_model(0), small_model(1)
    codistill = Codistillation(model, codistill_dir=str(tmp_path), codistill_id=0, codistill_alpha=0.5)
    try:
        x = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
        logits = model(x)
        assert codistill.penalty(logits, lambda p: p(x)).item() == 0.0  # no peer yet
        codistill.exchange.peers[1].model = peer  # as a swap leaves it
        codistill.exchange.peers[1].num_updates = 0
        penalty = codistill.penalty(logits, lambda p: p(x))
        # mean over the 2 rows of the mean over the 2 logits of the squared difference
        with torch.no_grad():
            expected = ((logits - peer(x)) ** 2).mean(-1).mean()
        assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
        assert codistill.alpha == 0.5  # epoch 1: alpha0
        (codistill.alpha * penalty).backward()
        # d/dlogits of 0.5 * mean_rows mean_V (l - q)^2 = 0.5 * 2 (l - q) / (2 * 2)
        grad = 0.5 * 2 * (logits - peer(x)).detach() / 4
        assert torch.allclose(model.bias.grad, grad.sum(0), atol=1e-6)
        assert all(p.grad is None for p in peer.parameters())
        codistill.step(0, epoch=3)
        assert codistill.alpha == pytest.approx(0.5 * 1.1 ** 2)
    finally:
        codistill.close()


@pytest.mark.parametrize("keywords, message", [
    ({"codistill_id": 2}, r"^codistill_id must be in \[0, codistill_num_models\)"),
    ({"codistill_id": 0, "codistill_num_models": 1}, r"^codistill_num_models must be >= 2"),
    ({"codistill_id": 0, "codistill_dir": ""}, r"^codistill_dir is required"),
    ({"codistill_id": 0, "codistill_alpha": -1.0}, r"codistill_alpha\) must be a finite number >= 0"),
    ({"codistill_id": 0, "codistill_method": "diloco"}, r"^codistill_wait_for_peers must be > 0"),
])
def test_bad_keywords_fail_naming_the_keyword(tmp_path, keywords, message):
    with pytest.raises(ValueError, match=message):
        Codistillation(torch.nn.Linear(2, 2), **{"codistill_dir": str(tmp_path), **keywords})


def test_an_unknown_keyword_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"not codistill_\* keywords: \['codistill_alhpa'\]"):
        Codistillation(torch.nn.Linear(2, 2), codistill_dir=str(tmp_path), codistill_id=0, codistill_alhpa=1)


def test_the_state_carries_alpha_and_the_peer_versions(tmp_path):
    model = small_model(0)
    codistill = Codistillation(model, codistill_dir=str(tmp_path), codistill_id=0)
    codistill.step(7, epoch=4, num_lr_decays=1)
    codistill.exchange.peers[1].num_updates, codistill.exchange.peers[1].model = 5, model
    state = codistill.state_dict()
    codistill.close()
    resumed = Codistillation(model, codistill_dir=str(tmp_path), codistill_id=0)
    try:
        resumed.load_state_dict(state)
        assert (resumed.epoch, resumed.num_updates, resumed.num_lr_decays) == (4, 7, 1)
        assert resumed.alpha == pytest.approx(0.1 * 1.1 ** 3)
        assert resumed.exchange.peer_versions() == {1: 5}
    finally:
        resumed.close()


def test_localsgd_through_the_object(tmp_path):
    models = [small_model(0), small_model(1)]
    mean = {n: (models[0].state_dict()[n] + models[1].state_dict()[n]) / 2 for n in ("weight", "bias")}
    xs = [Codistillation(m, codistill_dir=str(tmp_path), codistill_id=i, codistill_method="localsgd",
                         codistill_interval=5, codistill_wait_for_peers=60.0, codistill_snapshot_dtype="fp32")
          for i, m in enumerate(models)]
    try:
        assert all(x.alpha == 0 and x.peers() == [] for x in xs)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda x: x.step(5), xs))
        for m in models:
            assert torch.allclose(m.weight, mean["weight"], atol=1e-7) and torch.allclose(m.bias, mean["bias"])
        assert xs[0].metrics()["averaged_models"] == 2
    finally:
        for x in xs:
            x.close()
