"""Load a training checkpoint (saved at any layout) into one process and decode greedily."""

import dataclasses

import torch

from megatron.core import dist_checkpointing

from megatron_qwen.config.arguments import RunConfig
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.parallel import ParallelConfig
from megatron_qwen.model.builder import build_model
from megatron_qwen.platform.distributed import init_distributed, on_gpu
from megatron_qwen.training.checkpoint import load_weights
from megatron_qwen.training.checkpoint_dirs import iteration_dir, latest_iteration


def load_model_for_inference(checkpoint_root: str):
    """The model of the latest checkpoint under ``checkpoint_root`` (a ``--save`` directory),
    built for a single process (TP1, PP1); the model shape is read from the checkpoint."""
    iteration = latest_iteration(checkpoint_root)
    if iteration is None:
        raise ConfigError(f"{checkpoint_root}: no latest_checkpointed_iteration.txt; pass a --save directory")
    ckpt_dir = iteration_dir(checkpoint_root, iteration)
    trained = RunConfig.from_dict(dist_checkpointing.load_common_state_dict(ckpt_dir)["run_config"])
    cfg = dataclasses.replace(trained, parallel=ParallelConfig())  # the same model in one process
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    (model,) = build_model(cfg, initialize=False)
    load_weights(ckpt_dir, [model])
    model.eval()
    model.vocab_size_unpadded = cfg.model.vocab_size
    return model.cuda() if on_gpu() else model


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
    """Continue each prompt with its most likely tokens until a stop id or ``max_new_tokens``.
    The stop id itself is not returned. (No KV cache: meant for short evaluation answers.)"""
    device = next(model.parameters()).device
    vocab = getattr(model, "vocab_size_unpadded", None)
    outputs = []
    for prompt in prompts:
        tokens = torch.tensor([prompt], dtype=torch.long, device=device)
        generated = []
        for _ in range(max_new_tokens):
            positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0)
            logits = model(tokens, positions, None)[0, -1]
            next_id = int(logits[:vocab].argmax())  # padded vocabulary rows are never produced
            if next_id in stop_ids:
                break
            generated.append(next_id)
            tokens = torch.cat([tokens, tokens.new_tensor([[next_id]])], dim=1)
        outputs.append(generated)
    return outputs
