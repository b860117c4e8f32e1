"""Non-finite losses and loss spikes: which steps to skip, who to blame, and when to give up.

A step is skipped (weights, optimizer state and LR schedule untouched; its data counts as
consumed) when any data-parallel rank's loss or the gradient norm is not finite, and, with
--skip-loss-spikes, when the loss is above --loss-spike-factor times the running mean.
--max-skipped-iterations skips in a row stop the run: the data or the run is broken, and the
checkpoints hold only weights from before the streak (a skipped step changes nothing).
"""

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_qwen.config.settings import TrainSettings

_SPIKE_WINDOW = 20  # finite losses in the running mean; no spike is called before the window is full


class TrainingHalted(RuntimeError):
    """Too many skipped steps in a row; the message is one line."""


@dataclass(frozen=True)
class Verdict:
    """What judge() found in one step's losses, the same on every rank."""

    bad_dp_ranks: tuple[int, ...] = ()  # the data-parallel ranks whose loss was not finite
    spike: bool = False  # the loss was a spike
    skip: bool = False  # the update must be skipped: a non-finite loss, or a spike with --skip-loss-spikes


class StepHealth:
    def __init__(self, t: TrainSettings):
        self.max_skipped = t.max_skipped_iterations
        self.spike_factor = t.loss_spike_factor
        self.skip_spikes = t.skip_loss_spikes
        self._recent = deque(maxlen=_SPIKE_WINDOW)
        self.streak = 0

    def judge(self, local_loss: torch.Tensor | None, loss: float | None) -> Verdict:
        """This step's verdict (a collective: every rank calls it and gets the same answer), for the engine
        (whether to skip) and for record() (what to report). ``local_loss`` is this rank's [loss sum, count, ...]
        before the data-parallel reduction (last pipeline stage only), ``loss`` the reduced one."""
        dp_size = parallel_state.get_data_parallel_world_size()
        flags = torch.zeros(dp_size + 1, dtype=torch.int32)
        if local_loss is not None:  # the last pipeline stage: the only one that knows the loss
            flags[parallel_state.get_data_parallel_rank()] = int(not bool(torch.isfinite(local_loss[0])))
            flags[dp_size] = int(self._is_spike(loss))
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        flags = flags.tolist()
        bad, spike = tuple(r for r in range(dp_size) if flags[r]), bool(flags[dp_size])
        return Verdict(bad_dp_ranks=bad, spike=spike, skip=bool(bad) or (spike and self.skip_spikes))

    def _is_spike(self, loss: float | None) -> bool:
        if not self.spike_factor or loss is None or not math.isfinite(loss):
            return False
        full = len(self._recent) == self._recent.maxlen
        spike = full and loss > self.spike_factor * sum(self._recent) / len(self._recent)
        if not spike:
            self._recent.append(loss)
        return spike

    def record(self, iteration: int, grad_norm: float | None, update_successful: bool, verdict: Verdict) -> None:
        """Report the step's anomalies (rank 0) and count skips in a row; TrainingHalted past the limit."""
        bad_dp_ranks, spike = verdict.bad_dp_ranks, verdict.spike
        self.streak = 0 if update_successful else self.streak + 1
        if dist.get_rank() == 0:
            if bad_dp_ranks:
                print(f" iteration {iteration}: non-finite loss on data-parallel rank(s) "
                      f"{', '.join(map(str, bad_dp_ranks))}: update skipped", flush=True)
            elif not update_successful and not spike:
                print(f" iteration {iteration}: non-finite gradient norm ({grad_norm}); the losses of every "
                      "data-parallel rank were finite: update skipped", flush=True)
            if spike:
                print(f" iteration {iteration}: loss spike, above {self.spike_factor:g} x the mean of the last "
                      f"{_SPIKE_WINDOW} losses" + (": update skipped" if self.skip_spikes else ""), flush=True)
        if self.max_skipped and self.streak >= self.max_skipped:
            raise TrainingHalted(
                f"{self.streak} iterations in a row skipped (up to iteration {iteration}), the limit set by "
                "--max-skipped-iterations; the checkpoints hold the weights from before the streak: check the "
                "data after the last checkpoint's consumed samples, or lower --lr, and resume")

