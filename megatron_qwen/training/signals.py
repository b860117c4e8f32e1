"""Stop cleanly on SIGTERM (slurm preemption, time limits) or after --exit-duration-in-mins: save, then exit.

The handler only records the signal; the loop asks at each iteration boundary, all ranks
together (one all-reduce), so every rank saves the same iteration and leaves together, even
though their clocks and signals arrive apart.
"""

import signal
import time

import torch
import torch.distributed as dist


class ExitSignal:
    def __init__(self, enabled: bool, signum: int = signal.SIGTERM, duration_mins: float | None = None):
        self.enabled = enabled
        self.deadline = time.monotonic() + 60 * duration_mins if duration_mins else None
        self._received = False
        if enabled:
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self._received = True

    def received(self) -> str | None:
        """Why to stop now, if any rank got the signal or is past the deadline (a collective: every rank
        must call it); None to go on."""
        if not self.enabled and self.deadline is None:
            return None
        late = self.deadline is not None and time.monotonic() >= self.deadline
        flags = torch.tensor([int(self._received), int(late)], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flags = flags.cuda()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            return "exit signal received"
        return "--exit-duration-in-mins reached" if flags[1] else None
