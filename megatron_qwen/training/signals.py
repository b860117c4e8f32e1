"""Stop cleanly on SIGTERM (slurm preemption, time limits): save, then exit.

The handler only records the signal; the loop asks at each iteration boundary, all ranks
together (one all-reduce), so every rank saves the same iteration and leaves together.
"""

import signal

import torch
import torch.distributed as dist


class ExitSignal:
    def __init__(self, enabled: bool, signum: int = signal.SIGTERM):
        self.enabled = enabled
        self._received = False
        if enabled:
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self._received = True

    def received(self) -> bool:
        """Whether any rank got the signal (a collective: every rank must call it)."""
        if not self.enabled:
            return False
        flag = torch.tensor([1 if self._received else 0], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
