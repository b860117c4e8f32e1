"""The data-parallel engine a run trains with (--zero-engine): what train() asks of it is
``model`` (chunks, for evaluation), ``checkpointer``, ``train_step`` and ``lr``."""

from megatron_qwen.config.arguments import RunConfig
from megatron_qwen.model.builder import build_model, wrap_for_training
from megatron_qwen.training.anomalies import StepHealth
from megatron_qwen.training.checkpoint import Checkpointer
from megatron_qwen.training.optimizer import build_optimizer, build_scheduler
from megatron_qwen.training.step import train_step


class MegatronEngine:
    """megatron-core DDP, with its distributed optimizer for ZeRO-1, at any TP/PP/VP layout."""

    def __init__(self, cfg: RunConfig, device):
        t = cfg.train
        self.cfg, self.device = cfg, device
        zero1 = cfg.zero.distributed_optimizer
        self.model = wrap_for_training(build_model(cfg), cfg.parallel, distributed_optimizer=zero1,
                                       compiled_layers=cfg.build.compile_layers)
        self.optimizer = build_optimizer(self.model, t.optim, bf16=cfg.build.precision == "bf16",
                                         use_distributed_optimizer=zero1)
        self.scheduler = build_scheduler(self.optimizer, t.optim, t.train_iters, t.global_batch_size)
        self.checkpointer = Checkpointer(cfg, self.model, self.optimizer, self.scheduler)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, microbatches: list[dict], num_microbatches: int, iteration: int, health: StepHealth):
        """One optimizer step. Returns (loss, grad_norm, update_successful)."""
        t = self.cfg.train
        return train_step(self.model, self.optimizer, self.scheduler, [iter(microbatches) for _ in self.model],
                          num_microbatches, t.seq_length, t.micro_batch_size, t.global_batch_size, self.device,
                          iteration, health)


def build_engine(cfg: RunConfig, world_size: int, device):
    if cfg.zero.deepspeed:
        from megatron_qwen.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, world_size, device)
    return MegatronEngine(cfg, device)
