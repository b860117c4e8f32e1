"""PPO at one layout, launched by torchrun (or alone for one process); tests/test_ppo_parity.py reads OUT.

``--layouts '{"name": [flags...], ...}' --out ROOT`` runs each layout in turn in the same processes. Each builds
PPO's four models (tiny Qwen, vocabulary 1024; fresh weights from one seed, which are layout-independent) at the
layout and writes ROOT/name/report.json (the reporting rank):
  greedy    the rollout decoder's greedy responses to fixed prompts (every rank must agree)
  scores    the scoring passes on a fixed batch: policy and reference log-probabilities, entropy, values, scores
  steps     per update, [value loss, value clip fraction, policy loss, policy clip fraction], for two updates on
            one fixed seeded rollout batch (the second's losses are those of the weights after the first)
"""

import json
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parity_worker import run_each_layout

from megatron_qwen.config.recipes import PPO
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import init_distributed
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.megatron_engine import build_model_and_optimizer
from megatron_qwen.training.ppo_models import value_config
from megatron_qwen.training.ppo_rollout import Rollout, build_rollout, sample_responses, score
from megatron_qwen.training.ppo_update import Trained, policy_objective, step_model, value_objective

ROWS, MICRO_BATCH, SEQ, SEED = 8, 2, 32, 1234
FLAGS = ["--model-size", "tiny", "--seed", str(SEED), "--seq-length", str(SEQ), "--micro-batch-size",
         str(MICRO_BATCH), "--global-batch-size", str(ROWS), "--train-iters", "2", "--lr", "1e-3", "--value-lr", "1e-3",
         "--transformer-impl", "local", "--no-finetune", "--zero-bucket-size", "200000"]


def fixed_rollout(rows: range, vocab: int) -> tuple[Rollout, dict]:
    """Rows ``rows`` of a seeded batch: prompts of 4-9 ids and responses of 3-12, and the rollout's per-token
    tensors (old log-probabilities near the policy's, advantages, old values, returns) drawn per row."""
    prompts, responses, drawn = [], [], []
    for i in rows:
        g = torch.Generator().manual_seed(30_000 + i)
        prompts.append(torch.randint(1, vocab, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist())
        responses.append(torch.randint(1, vocab, (int(torch.randint(3, 13, (1,), generator=g)),), generator=g).tolist())
        drawn.append({k: torch.randn(SEQ, generator=g) for k in ("noise", "advantages", "old_values", "returns")})
    rollout = build_rollout(prompts, responses, SEQ, end_id=vocab - 1, stop_ids=set())
    tensors = {k: torch.stack([d[k] for d in drawn]) for k in drawn[0]}
    tensors["old_logprobs"] = -6.9 + 0.1 * tensors.pop("noise")  # about log(1/1024), so ratios near 1 and beyond
    return rollout, tensors


def run_layout(flags: list[str], out: str) -> None:
    cfg = parse_run_config(PPO, FLAGS + flags)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    init_distributed(cfg.parallel, cfg.model.num_layers, SEED)
    device = torch.device("cpu")
    vcfg = value_config(cfg, cfg.model)
    policy, value = Trained(*build_model_and_optimizer(cfg)), Trained(*build_model_and_optimizer(vcfg))
    reference, reward = (build_model(c.model, c.parallel, c.build) for c in (cfg, vcfg))
    dp_rank, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    per_rank = ROWS // dp
    mine = range(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    report: dict = {"rows": list(mine), "layout": {"tp": parallel_state.get_tensor_model_parallel_world_size(),
                               "pp": parallel_state.get_pipeline_model_parallel_world_size(), "dp": dp}}

    prompts = [fixed_rollout(range(i, i + 1), cfg.model.vocab_size)[0].tokens[0, :5].tolist() for i in range(3)]
    report["greedy"] = sample_responses(policy.model[0], prompts, 6, set(), cfg.model.vocab_size, None)
    rollout, tensors = fixed_rollout(mine, cfg.model.vocab_size)
    score(rollout, policy.model, reference, value.model, reward, MICRO_BATCH, SEQ, device)
    if rollout.scores is not None:
        report["scores"] = {k: getattr(rollout, k).tolist() for k in ("logprobs", "ref_logprobs", "entropy", "values",
                                                                       "scores")}
    health = StepHealth(cfg.train)
    steps = []
    for _ in range(2):
        v_loss, _, ok_v, _, v_fig = step_model(value, value_objective(cfg.ppo), rollout.microbatches(
            MICRO_BATCH, old_values=tensors["old_values"], returns=tensors["returns"]), SEQ, ROWS, health, device)
        p_loss, _, ok_p, _, p_fig = step_model(policy, policy_objective(cfg.ppo), rollout.microbatches(
            MICRO_BATCH, old_logprobs=tensors["old_logprobs"], advantages=tensors["advantages"]), SEQ, ROWS, health,
            device)
        assert ok_v and ok_p
        steps.append([v_loss, v_fig.get("value clip fraction"), p_loss, p_fig.get("policy clip fraction")])
    report["steps"] = steps
    if steps[0][0] is not None and parallel_state.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
        os.makedirs(out, exist_ok=True)
        with open(f"{out}/report.{dist.get_rank()}.json", "w") as f:
            json.dump({**report, "world": world}, f)
    parallel_state.destroy_model_parallel()


if __name__ == "__main__":
    run_each_layout(run_layout)
