"""The megatron engine: megatron-core DDP, with its distributed optimizer for ZeRO-1, at any TP/PP/VP layout."""

from megatron_qwen.checkpointing.resolver import Start
from megatron_qwen.config.run import RunConfig
from megatron_qwen.model.builder import build_model, wrap_for_training
from megatron_qwen.training.anomalies import StepHealth, Verdict
from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
from megatron_qwen.training.optimizer import build_optimizer, build_scheduler
from megatron_qwen.training.step import apply_update, forward_backward


def build_model_and_optimizer(cfg: RunConfig, initialize: bool = True):
    """(model chunks wrapped for training, optimizer, LR schedule) of the megatron engine for ``cfg``.
    ``initialize=False`` leaves the weights uninitialized, for a model about to be loaded."""
    zero1 = cfg.zero.distributed_optimizer
    chunks = build_model(cfg.model, cfg.parallel, cfg.build, initialize=initialize)
    model = wrap_for_training(chunks, cfg.parallel, distributed_optimizer=zero1,
                              compiled_layers=cfg.build.compile_layers)
    optimizer = build_optimizer(model, cfg.train.optim, bf16=cfg.build.precision == "bf16",
                                use_distributed_optimizer=zero1)
    scheduler = build_scheduler(optimizer, cfg.train.optim, cfg.train.train_iters, cfg.train.global_batch_size)
    return model, optimizer, scheduler


class MegatronEngine:
    """The engine train() steps (training/engine.py's Engine) on megatron-core's own data parallelism."""

    def __init__(self, cfg: RunConfig, device, start: Start):
        self.cfg, self.device = cfg, device
        self.model, self.optimizer, self.scheduler = build_model_and_optimizer(cfg)
        self.checkpointer = MegatronCheckpointer(cfg, self.model, self.optimizer, self.scheduler, start)
        self.figures: dict[str, float] = {}

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, microbatches: list[dict], num_microbatches: int,
                   health: StepHealth) -> tuple[float | None, float | None, bool, Verdict]:
        """One optimizer step: (loss, grad_norm, update_successful, the health verdict). The update is skipped
        when the verdict says so (a non-finite loss, a spike to skip) or the gradient norm is not finite."""
        t = self.cfg.train
        self.figures = {}
        local, loss = forward_backward(self.model, self.optimizer, [iter(microbatches) for _ in self.model],
                                       num_microbatches, t.seq_length, t.micro_batch_size, self.device, self.figures)
        verdict = health.judge(local, loss)
        if verdict.skip:
            return loss, None, False, verdict
        grad_norm, update_successful = apply_update(self.optimizer, self.scheduler, t.global_batch_size)
        return loss, grad_norm, update_successful, verdict
