"""--profile: torch.profiler over a few training steps, its trace written beside the tensorboard events.

Megatron-LM's flags and counting: the recording covers the steps that take the run from iteration
--profile-step-start to --profile-step-end, on the global ranks of --profile-ranks. The trace is the
Chrome-trace JSON of torch's tensorboard_trace_handler (<rank>.<time>.pt.trace.json), which the
PyTorch Profiler plugin of tensorboard and chrome://tracing read; CPU operators always, CUDA kernels
on a GPU.
"""

import torch

from megatron_qwen.config.settings import LogSettings


class StepProfiler:
    def __init__(self, settings: LogSettings, rank: int):
        self.settings = settings
        self.rank = rank
        self.enabled = settings.profile and rank in settings.profile_ranks
        self._profile = None

    def before_step(self, iteration: int) -> None:
        """Start the profiler a step before --profile-step-start (``iteration`` steps done): that step warms
        it up unrecorded, as in Megatron-LM; the steps after it are recorded, each marked ProfilerStep#N."""
        start, end = self.settings.profile_step_start, self.settings.profile_step_end
        if not self.enabled or self._profile is not None or iteration != max(start - 1, 0):
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        handler = torch.profiler.tensorboard_trace_handler(self.settings.tensorboard_dir,
                                                           worker_name=f"rank{self.rank}")
        schedule = torch.profiler.schedule(wait=0, warmup=min(start, 1), active=end - start, repeat=1)
        self._profile = torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=handler,
                                               record_shapes=True)
        self._profile.start()

    def after_step(self, iteration: int) -> None:
        """Mark the step's end in the trace; stop and write it at --profile-step-end."""
        if self._profile is None:
            return
        self._profile.step()
        if iteration >= self.settings.profile_step_end:
            self.stop()

    def stop(self) -> None:
        """Write the trace of what was recorded (also when the run stops early)."""
        if self._profile is not None:
            self._profile.stop()
            self._profile = None
            print(f" rank {self.rank}: profiler trace written to {self.settings.tensorboard_dir}", flush=True)
