"""Which samples each rank trains on, step by step.

The global batch at ``consumed_samples = c`` is dataset samples ``c .. c+G-1``. Micro-batch
``m`` of data-parallel rank ``d`` takes ``c + m*mbs*dp + d*mbs`` onwards (Megatron-LM's
pretraining sampler order), so a run resumed from ``consumed_samples`` sees exactly the samples
the uninterrupted run would have seen.
"""

from typing import Iterator

import torch


def collate(samples: list[dict]) -> dict:
    """Stack a micro-batch; keys a dataset leaves as None (no explicit attention mask) stay None."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = None if values[0] is None else torch.stack([torch.as_tensor(v) for v in values])
    return out


def microbatch_indices(consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                       dp_rank: int, dp_size: int) -> list[list[int]]:
    per_step = micro_batch_size * dp_size
    return [
        list(range(consumed_samples + m * per_step + dp_rank * micro_batch_size,
                   consumed_samples + m * per_step + (dp_rank + 1) * micro_batch_size))
        for m in range(global_batch_size // per_step)
    ]


class MicroBatchSampler:
    """Index lists for this data-parallel rank, one micro-batch at a time, from a start offset."""

    def __init__(self, total_samples: int, consumed_samples: int, global_batch_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[list[int]]:
        c = self.consumed_samples
        while c + self.global_batch_size <= self.total_samples:
            yield from microbatch_indices(c, self.global_batch_size, self.micro_batch_size,
                                          self.dp_rank, self.dp_size)
            c += self.global_batch_size

    def __len__(self) -> int:
        steps = (self.total_samples - self.consumed_samples) // self.global_batch_size
        return steps * (self.global_batch_size // (self.micro_batch_size * self.dp_size))


def microbatch_loader(dataset, consumed_samples: int, global_batch_size: int, micro_batch_size: int,
                      dp_rank: int, dp_size: int, num_workers: int = 0) -> Iterator[dict]:
    sampler = MicroBatchSampler(len(dataset), consumed_samples, global_batch_size, micro_batch_size,
                                dp_rank, dp_size)
    return iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=num_workers > 0,
    ))


def next_global_batch(loader: Iterator[dict], num_microbatches: int) -> list[dict]:
    """This rank's micro-batches of the next step (every pipeline chunk walks the same list)."""
    return [next(loader) for _ in range(num_microbatches)]
