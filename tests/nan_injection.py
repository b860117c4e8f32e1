"""Fault injection for the tests: a NaN loss in one data-parallel rank's first micro-batch at chosen
iterations of train(), put in from outside the training code, which has no hook for it. The engine's
train_step is wrapped to know the iteration (the TrainState its checkpointer's load returned, which
train() advances), and the loss function (training/step.py's masked_token_loss, which both engines
call on the last pipeline stage) turns the next output it sees into NaN when armed.

Used in the job processes of tests/fault_harness.py (a job's "nan_loss") and tests/parity/deepspeed_worker.py.
"""

import contextlib

from megatron.core import parallel_state

from megatron_qwen.training import loop, step


@contextlib.contextmanager
def nan_loss_at(iterations: set[int], dp_rank: int):
    """Within the block, every train() makes data-parallel rank ``dp_rank``'s first micro-batch loss NaN
    at ``iterations``."""
    armed = [False]
    real_build_engine, real_loss = loop.build_engine, step.masked_token_loss

    def build_engine(*args):
        engine = real_build_engine(*args)
        real_load, real_train_step = engine.checkpointer.load, engine.train_step
        run = {}

        def load():
            run["state"] = real_load()
            return run["state"]

        def train_step(microbatches, num_microbatches, health):
            armed[0] = (run["state"].iteration + 1 in iterations
                        and parallel_state.get_data_parallel_rank() == dp_rank)
            return real_train_step(microbatches, num_microbatches, health)

        engine.checkpointer.load, engine.train_step = load, train_step
        return engine

    def masked_token_loss(loss_mask, output_tensor):
        if armed[0]:
            armed[0] = False
            output_tensor = output_tensor * float("nan")
        return real_loss(loss_mask, output_tensor)

    loop.build_engine, step.masked_token_loss = build_engine, masked_token_loss
    try:
        yield
    finally:
        loop.build_engine, step.masked_token_loss = real_build_engine, real_loss
