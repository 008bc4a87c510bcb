"""fairseq checkpoints under torch's weights_only loader: the file, and the state that
rank 0 broadcasts to the other ranks of a model when it resumes."""
import argparse
import io
import subprocess
import sys

import torch
from fairseq.distributed.utils import _split_tensors_from_obj
from omegaconf import OmegaConf

# Loads the state in a fresh process (where the plugin has not registered yet), weights
# only, as fairseq's broadcast_object does on ranks > 0; with "allow", after the plugin's
# allowlist.
LOAD = """
import sys, torch
if sys.argv[2] == "allow":
    from fairseq_codistill.fairseq_plugin.checkpoints import allow_fairseq_checkpoints
    allow_fairseq_checkpoints()
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
print(state["cfg"].common.seed, state["cfg"].optimization.lr[0], state["args"].encoder_layers)
"""


def test_the_state_rank_0_broadcasts_on_resume_loads_weights_only(tmp_path):
    """fairseq's broadcast_object sends the loaded state, its config as omegaconf
    containers (OmegaConf.create of the saved dict) and its tensors as placeholders (sent
    apart), through torch.save and torch.load."""
    state = {"cfg": OmegaConf.create({"common": {"seed": 1, "cpu": True}, "optimization": {"lr": [1e-3]}}),
             "args": argparse.Namespace(arch="transformer", encoder_layers=2),  # legacy checkpoints
             "model": {"w": torch.ones(2)}, "extra_state": {"train_iterator": {"epoch": 3}}}
    buffer = io.BytesIO()
    torch.save(_split_tensors_from_obj(state, []), buffer)  # what broadcast_object sends
    path = tmp_path / "state.pt"
    path.write_bytes(buffer.getvalue())
    plain = subprocess.run([sys.executable, "-c", LOAD, str(path), "plain"], capture_output=True, text=True)
    assert plain.returncode != 0 and "Unsupported global" in plain.stderr  # torch's default refuses it
    allowed = subprocess.run([sys.executable, "-c", LOAD, str(path), "allow"], capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert allowed.stdout.split() == ["1", "0.001", "2"]
