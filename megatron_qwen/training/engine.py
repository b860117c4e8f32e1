"""The seam between the training loop and the data-parallel engine it steps (--zero-engine).

Two engines implement it: megatron-core's DDP and distributed optimizer (training/megatron_engine.py)
and DeepSpeed ZeRO stages 1-3 (training/deepspeed_engine.py). train() asks for nothing else.
"""

from typing import Protocol

from megatron_qwen.checkpointing.resolver import starting_point
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.config.run import RunConfig
from megatron_qwen.training.anomalies import StepHealth, Verdict
from megatron_qwen.training.deepspeed_engine import DeepSpeedEngine
from megatron_qwen.training.megatron_engine import MegatronEngine


class Checkpointer(Protocol):
    """Saves and restores an engine's model, optimizer, schedule and run state under --save/--load."""

    def load(self) -> TrainState:
        """Restore from --load (a resume, or weights only); the state to continue from."""

    def save(self, state: TrainState) -> None:
        """Save a checkpoint of ``state`` (every rank calls it); it may complete later (--async-save)."""

    def finish_pending(self, blocking: bool) -> None:
        """Complete the saves still in flight; with ``blocking``, wait for them."""


class Engine(Protocol):
    model: list  # the model chunks this rank holds, for evaluation
    checkpointer: Checkpointer
    figures: dict[str, float]  # the last step's figures besides the loss, by name (training/step.py's Objective)

    @property
    def lr(self) -> float:
        """The learning rate of the last step."""

    def train_step(self, microbatches: list[dict], num_microbatches: int,
                   health: StepHealth) -> tuple[float | None, float | None, bool, Verdict]:
        """One optimizer step over this rank's micro-batches: (loss on the last pipeline stage, gradient norm,
        whether the update was applied, ``health``'s verdict on the loss, for its record())."""


def build_engine(cfg: RunConfig, world_size: int, device) -> Engine:
    """The engine --zero-engine names, started where --load says (checkpointing/resolver.py's starting point)."""
    start = starting_point(cfg.checkpoint)
    if cfg.zero.deepspeed:
        return DeepSpeedEngine(cfg, world_size, device, start)
    return MegatronEngine(cfg, device, start)
