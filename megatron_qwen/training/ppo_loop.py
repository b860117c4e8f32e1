"""The PPO job (python -m megatron_qwen.ppo; docs/ppo.md): per iteration, sample two responses for each of a batch
of prompts with the policy's KV-cache decoding, score them (training/ppo_rollout.py), then step the value model
and, after --value-warmup-iters of value-only warm-up, the policy (training/ppo_update.py). Checkpoints, SIGTERM and
--exit-* stops, non-finite steps and the metrics sinks are the other jobs' (training/loop.py)."""

import dataclasses
import signal
import time

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.run import RunConfig
from megatron_qwen.data.prompts import iteration_prompts, read_prompts
from megatron_qwen.inference.generate import Sampling
from megatron_qwen.model.flops import training_flops_per_token
from megatron_qwen.platform.distributed import compute_device, init_distributed
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.batches import microbatch_loader
from megatron_qwen.training.datasets import build_datasets
from megatron_qwen.training.loop import run_banner, save_or_exit
from megatron_qwen.training.metrics import MetricsSink
from megatron_qwen.training.ppo_checkpoint import PPOCheckpointer
from megatron_qwen.training.ppo_models import PPOModels, build_ppo_models, load_frozen, start_weights
from megatron_qwen.training.ppo_objective import RunningMean
from megatron_qwen.training.ppo_rollout import build_rollout, sample_responses, score
from megatron_qwen.training.ppo_update import (
    policy_objective,
    ptx_weight,
    returns_and_figures,
    step_model,
    value_objective,
)
from megatron_qwen.training.signals import ExitSignal


def rollout_seed(seed: int, iteration: int, dp_rank: int) -> int:
    """The sampling seed of one data-parallel rank's rollout: the same at a resume, different on every rank."""
    return (seed * 1_000_003 + iteration * 1009 + dp_rank) % 2**63


class PPOJob:
    """What an iteration needs: the models, the prompts, the reward normaliser, the pretraining batches."""

    def __init__(self, cfg: RunConfig, models: PPOModels, prompts: list[list[int]], tokenizer, device):
        self.cfg, self.models, self.prompts, self.device = cfg, models, prompts, device
        self.stop_ids, self.end_id = {tokenizer.im_end_id, tokenizer.eod}, tokenizer.im_end_id
        self.normaliser = RunningMean()
        self.health = {"policy": StepHealth(cfg.train), "value": StepHealth(cfg.train)}
        self.objectives = {"policy": policy_objective(cfg.ppo), "value": value_objective(cfg.ppo)}
        self.ptx_loader = None

    def my_prompts(self, iteration: int) -> list[list[int]]:
        """This data-parallel rank's prompts of ``iteration``, each repeated --samples-per-prompt times."""
        o, dp_rank = self.cfg.ppo, parallel_state.get_data_parallel_rank()
        per_rank = self.cfg.train.global_batch_size // parallel_state.get_data_parallel_world_size()
        count = per_rank // o.samples_per_prompt
        chosen = iteration_prompts(len(self.prompts), iteration, count * parallel_state.get_data_parallel_world_size(),
                                   self.cfg.build.seed)[dp_rank * count:(dp_rank + 1) * count]
        return [self.prompts[i] for i in chosen for _ in range(o.samples_per_prompt)]

    def rollout(self, iteration: int, sampling: Sampling | None):
        """This rank's scored rollout of ``iteration`` and the seconds spent generating."""
        cfg, o, m = self.cfg, self.cfg.ppo, self.models
        prompts = self.my_prompts(iteration)
        if cfg.parallel.overlap_param_gather and cfg.zero.distributed_optimizer:
            for chunk in m.policy.model:  # the decoder calls the model without DDP's hooks, which gather the update
                chunk.start_param_sync(force_sync=True)
        start = time.perf_counter()
        responses = sample_responses(m.policy.model[0], prompts, o.max_new_tokens, self.stop_ids,
                                     cfg.model.vocab_size, sampling)
        generation_s = time.perf_counter() - start
        rollout = build_rollout(prompts, responses, cfg.train.seq_length, self.end_id, self.stop_ids)
        score(rollout, m.policy.model, m.reference, m.value.model, m.reward, cfg.train.micro_batch_size,
              cfg.train.seq_length, self.device)
        return rollout, generation_s

    def iterate(self, iteration: int) -> tuple[float | None, float | None, bool, dict]:
        """One iteration: (value loss, value grad norm, whether every update was applied, figures)."""
        cfg, o, t = self.cfg, self.cfg.ppo, self.cfg.train
        start = time.perf_counter()
        sampling = Sampling(temperature=o.temperature, top_p=o.top_p,
                            seed=rollout_seed(cfg.build.seed, iteration, parallel_state.get_data_parallel_rank()))
        rollout, generation_s = self.rollout(iteration, sampling)
        advantages, returns, figures = returns_and_figures(rollout, self.normaliser, o, self.device)
        rollout_s = time.perf_counter() - start
        value_batches = rollout.microbatches(t.micro_batch_size, old_values=rollout.values, returns=returns)
        policy_batches = rollout.microbatches(t.micro_batch_size, old_logprobs=rollout.logprobs,
                                              advantages=advantages) + self._ptx_batches(rollout, iteration)
        applied, value_loss, value_norm = True, None, None
        for _ in range(o.ppo_epochs):
            value_loss, value_norm, ok, verdict, found = step_model(
                self.models.value, self.objectives["value"], value_batches, t.seq_length, t.global_batch_size,
                self.health["value"], self.device)
            self.health["value"].record(iteration + 1, value_norm, ok, verdict)
            applied &= ok
            figures.update(found, **{"value grad norm": value_norm})
            if iteration < o.value_warmup_iters:
                continue  # the policy is not run at all: its weights and optimizer stay as they are
            policy_loss, policy_norm, ok, verdict, found = step_model(
                self.models.policy, self.objectives["policy"], policy_batches, t.seq_length, t.global_batch_size,
                self.health["policy"], self.device)
            self.health["policy"].record(iteration + 1, policy_norm, ok, verdict)
            applied &= ok
            figures.update(found, **{"policy loss": policy_loss, "policy grad norm": policy_norm})
        seconds = time.perf_counter() - start
        generated = figures["response length"] * t.global_batch_size
        figures.update({"rollout tokens per sec": generated / generation_s, "rollout share": rollout_s / seconds,
                        "rollout seconds": rollout_s, "training seconds": seconds - rollout_s})
        return value_loss, value_norm, applied, {k: v for k, v in figures.items() if v is not None}

    def _ptx_batches(self, rollout, iteration: int) -> list[dict]:
        """This rank's pretraining micro-batches (--ptx-coef over --data-path), each token weighted (ppo_update.py)."""
        if self.ptx_loader is None:
            return []
        batches = [next(self.ptx_loader) for _ in range(len(rollout.tokens) // self.cfg.train.micro_batch_size)]
        weight = ptx_weight(rollout, batches, self.device)
        return [{**b, "ptx_weight": torch.full((len(b["tokens"]),), weight)} for b in batches]


def _ptx_loader(cfg: RunConfig, consumed_samples: int):
    """The pretraining micro-batches of --data-path from ``consumed_samples`` on (None without --ptx-coef)."""
    if not cfg.ppo.ptx_coef:
        return None
    pretraining = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_format="pretrain"))
    train_ds = build_datasets(pretraining)[0]
    return microbatch_loader(train_ds, consumed_samples, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                             parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())


def train_ppo(cfg: RunConfig, world_size: int) -> dict:
    """Run the PPO job ``cfg`` describes; returns the last logged figures."""
    t = cfg.train
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    prompts = read_prompts(cfg.ppo.prompt_data_path, tokenizer, t.seq_length, cfg.ppo.max_new_tokens)
    banner = run_banner(cfg, world_size)
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    device = compute_device()
    if dist.get_rank() == 0:
        print(banner, flush=True)
    job = PPOJob(cfg, build_ppo_models(cfg), prompts, tokenizer, device)
    checkpointer = PPOCheckpointer(cfg, job.models.policy, job.models.value, job.normaliser)
    load_frozen(cfg, job.models)
    state = checkpointer.load()
    if state is None:
        read = start_weights(cfg, job.models)
        state = TrainState()
        if dist.get_rank() == 0:
            print(f" {read}; reference and reward models frozen", flush=True)
    job.ptx_loader = _ptx_loader(cfg, state.consumed_samples)
    flops_per_token = training_flops_per_token(cfg.model, t.seq_length, cfg.build.head)  # the policy's
    sink = MetricsSink(cfg, world_size, flops_per_token, loss_name="value loss")
    exit_signal = ExitSignal(cfg.checkpoint.exit_signal_handler, signal.Signals[cfg.checkpoint.exit_signal],
                             duration_mins=cfg.checkpoint.exit_duration_in_mins)
    while state.iteration < t.train_iters:
        loss, grad_norm, applied, figures = job.iterate(state.iteration)
        state.advance(t.global_batch_size, applied)
        sink.log_step(state.iteration, state.consumed_samples, state.skipped_iterations, loss,
                      job.models.policy.optimizer.param_groups[0]["lr"], grad_norm, figures)
        if save_or_exit(cfg.checkpoint, t.train_iters, checkpointer, state, exit_signal):
            break
        sink.meter.restart()
    checkpointer.finish_pending(blocking=True)
    sink.close()
    return sink.last
