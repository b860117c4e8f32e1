"""The single-process reference equals transformers' Qwen2ForCausalLM, written by others.

This anchors the parity suite outside our code: the same weights, fed through our megatron-core
model and through transformers' own implementation, give the same logits in fp32.
"""

import subprocess
import sys

import torch
from conftest import REPO, quiet_env
from hf_fixtures import hf_model
from parity_outputs import WORKER, merge

from megatron_qwen.config.model import model_preset
from megatron_qwen.hf.layouts import to_hf_state_dict


def test_logits_equal_transformers_qwen2(tmp_path):
    out = tmp_path / "ref"
    proc = subprocess.run([sys.executable, WORKER, "--layouts", '{"ref": []}', "--out", str(tmp_path)],
                          cwd=REPO, env=quiet_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = model_preset("tiny")
    model = hf_model(cfg)
    state = to_hf_state_dict(merge(out, "weights"), cfg, "qwen2")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    ref = torch.load(out / "logits.pt")
    with torch.no_grad():
        hf_logits = model(input_ids=ref["tokens"]).logits
    ours = ref["logits"]
    assert ours.shape == hf_logits.shape
    err = (ours - hf_logits).abs().max().item()
    assert err <= 1e-5, f"logits differ from transformers' Qwen2 by {err}"
    # Not a vacuous match: the logits vary across the vocabulary and positions.
    assert hf_logits.std() > 1e-3
