"""PPO's rollouts are the project's KV-cache generation on the trained policy: for fixed weights, the greedy rollout
of the PPO job's policy (its DDP-wrapped model, batched, with the job's prompt encoding) equals, token for token,
tools/generate.py --chat --greedy on the SFT checkpoint and transformers' Qwen2ForCausalLM.generate on the same
weights. (At TP2 and PP2 the rollout decoder agrees with one process: tests/test_ppo_parity.py.)"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env
from hf_fixtures import hf_model
from ppo_fixtures import MODEL, ppo_flags, write_prompts

from megatron_qwen.config.recipes import SFT
from megatron_qwen.hf.layouts import to_hf_state_dict
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.training.arguments import parse_run_config

transformers = pytest.importorskip("transformers")

PROMPTS = ["Name a colour.", "Count to three, please, slowly and clearly.", "Hi"]
NEW_TOKENS = 10
WORKER = r"""
import json, sys
from megatron_qwen.config.recipes import PPO
from megatron_qwen.data.prompts import read_prompts
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.ppo_models import build_ppo_models, load_frozen, start_weights
from megatron_qwen.training.ppo_rollout import sample_responses

cfg = parse_run_config(PPO, json.loads(sys.argv[1]))
tokenizer = load_tokenizer()
prompts = read_prompts(cfg.ppo.prompt_data_path, tokenizer, cfg.train.seq_length, cfg.ppo.max_new_tokens)
init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
models = build_ppo_models(cfg)
load_frozen(cfg, models)
start_weights(cfg, models)
stops = {tokenizer.im_end_id, tokenizer.eod}
print("ROLLOUT " + json.dumps({"prompts": prompts, "responses": sample_responses(
    models.policy.model[0], prompts, cfg.ppo.max_new_tokens, stops, cfg.model.vocab_size, None)}))
destroy_distributed()
"""


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, ppo_checkpoints):
    root = tmp_path_factory.mktemp("ppo_rollout")
    flags = ppo_flags(ppo_checkpoints, write_prompts(root / "prompts.jsonl", PROMPTS), "--max-new-tokens",
                      str(NEW_TOKENS), "--global-batch-size", "6")
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(flags)], cwd=REPO, env=quiet_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return ppo_checkpoints, json.loads(proc.stdout.split("ROLLOUT ", 1)[1])


def cut(ids: list[int], stops) -> list[int]:
    """``ids`` up to (without) the first of ``stops``."""
    return next((ids[:i] for i, t in enumerate(ids) if t in stops), ids)


def test_greedy_rollouts_equal_tools_generate(rollout):
    root, got = rollout
    tokenizer = load_tokenizer()
    stops = {tokenizer.eod, tokenizer.im_end_id, tokenizer.im_start_id}  # the tool in --chat also stops here
    proc = subprocess.run([sys.executable, "tools/generate.py", "--load", str(root / "sft"), "--chat", "--greedy",
                           "--json", "--max-new-tokens", str(NEW_TOKENS),
                           *[a for p in PROMPTS for a in ("--prompt", p)]],
                          cwd=REPO, env=quiet_env(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    tool = [json.loads(line)["ids"] for line in proc.stdout.decode().split("\n")[:-1]]
    assert [cut(r, stops) for r in got["responses"]] == tool
    assert all(len(set(ids)) >= 4 for ids in tool), tool  # distinct tokens: the comparison means something


def test_greedy_rollouts_equal_transformers(rollout):
    root, got = rollout
    cfg = parse_run_config(SFT, [*MODEL, "--mock-data", "--no-finetune"]).model
    model = hf_model(cfg)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(torch.load(root / "sft_weights.pt"), cfg, "qwen2"),
                                                strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    tokenizer = load_tokenizer()
    stops = {tokenizer.eod, tokenizer.im_end_id}
    for prompt, response in zip(got["prompts"], got["responses"]):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
        new = out[0, len(prompt):].tolist()
        assert cut(response, stops) == cut(new, stops)
        assert response == new[:len(response)]  # the stop id, when one ended the response, is kept
