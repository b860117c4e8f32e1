"""Where a run stands: the record a checkpoint of either engine (ours or Megatron-LM's, megatron_lm.py)
restores besides the model, optimizer and schedule."""

from dataclasses import dataclass


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores besides the model, optimizer and schedule."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0

    def advance(self, global_batch_size: int, update_successful: bool) -> None:
        self.iteration += 1
        self.consumed_samples += global_batch_size
        self.skipped_iterations += 0 if update_successful else 1
