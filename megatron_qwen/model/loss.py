"""The language-model loss over a vocabulary split across tensor-parallel ranks, keeping only the logits.

megatron-core's vocab-parallel cross entropy casts the whole [tokens, V/TP] logits to fp32 and keeps the
fp32 softmax for the backward pass: at Qwen's 151,936 rows that is 9.3 GiB for 16k tokens, beside the bf16
logits. Here the arithmetic is the same (fp32 over bf16 logits, one log-sum-exp across the TP group), but
it runs over chunks of tokens and keeps only each token's log-sum-exp: the backward pass recomputes the softmax
chunk by chunk and writes the gradient over the logits it no longer needs. The loss then costs the bf16
logits and one chunk. On a GPU each chunk is one compiled kernel forward and one backward
(``--no-cross-entropy-fusion``: megatron-core's own).
"""

import functools

import torch
import torch.distributed as dist

CHUNK_ELEMENTS = 2**26  # logits per chunk: the eager path's fp32 temporary is 256 MiB


def _target_column(target: torch.Tensor, first_row: int, rows: int):
    """Per token [n, 1]: the target's column among this rank's rows (0 where another rank holds it), and
    whether this rank holds it."""
    local = (target - first_row).unsqueeze(-1)
    held = (local >= 0) & (local < rows)
    return torch.where(held, local, 0), held


def _chunk_statistics(logits: torch.Tensor, target: torch.Tensor, first_row: int):
    """Per token: the log-sum-exp over this rank's rows, and the target's logit (0 where another rank
    holds the target's row). Eager, one fp32 temporary the size of the chunk."""
    column, held = _target_column(target, first_row, logits.size(-1))
    top = logits.amax(-1, keepdim=True).float()
    lse = top + logits.to(torch.float32, copy=True).sub_(top).exp_().sum(-1, keepdim=True).log()
    picked = torch.where(held, logits.gather(-1, column).float(), 0.0)
    return lse.squeeze(-1), picked.squeeze(-1)


def _chunk_gradient(logits: torch.Tensor, target: torch.Tensor, first_row: int, lse: torch.Tensor,
                    grad_loss: torch.Tensor) -> torch.Tensor:
    """(softmax - one_hot(target)) x dloss per token, in fp32, rounded once to the logits' dtype: softmax x
    dloss everywhere, then the target's entries rewritten. No one-hot tensor: compiled, one pass over the
    chunk; eager, fp32 logits are overwritten in place (their last use) and bf16 ones take one fp32 copy."""
    column, held = _target_column(target, first_row, logits.size(-1))
    lse, grad_loss = lse.unsqueeze(-1), grad_loss.unsqueeze(-1)
    at_target = ((torch.exp(logits.gather(-1, column).float() - lse) - 1) * grad_loss).to(logits.dtype)
    gradient = logits.float().sub_(lse).exp_().mul_(grad_loss).to(logits.dtype)
    return gradient.scatter_(-1, column, torch.where(held, at_target, gradient.gather(-1, column)))


@functools.cache
def _compiled(fn):
    """Compiled, each chunk's cast, exponentials and reductions are one pass over the bf16 logits. Used on a
    GPU; the CPU runs the eager path, which reads and writes the same numbers (the compiled CPU kernels:
    losses within 2e-7 relative, bf16 gradients equal but for one element in 300,000)."""
    return torch.compile(fn, dynamic=False)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, compiled):
        rows = logits.size(-1)
        first_row = dist.get_rank(group) * rows if group is not None else 0
        flat, flat_target = logits.view(-1, rows), target.reshape(-1)
        statistics = _compiled(_chunk_statistics) if compiled else _chunk_statistics
        step = max(1, CHUNK_ELEMENTS // rows)
        lse = torch.empty(flat.size(0), dtype=torch.float32, device=logits.device)
        picked = torch.empty_like(lse)
        for start in range(0, flat.size(0), step):
            end = start + step
            lse[start:end], picked[start:end] = statistics(flat[start:end], flat_target[start:end], first_row)
        if group is not None and dist.get_world_size(group) > 1:
            # log-sum-exp over the whole vocabulary: shift by the largest rank's, sum the exponentials
            top = lse.clone()
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
            sums = torch.stack([torch.exp(lse - top), picked])
            dist.all_reduce(sums, group=group)
            lse, picked = top + torch.log(sums[0]), sums[1]
        ctx.save_for_backward(logits, target, lse)
        ctx.first_row, ctx.step, ctx.compiled = first_row, step, compiled
        return (lse - picked).view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, lse = ctx.saved_tensors
        grad = logits.detach()  # the logits are read for the last time here: their storage takes the gradient
        gradient = _compiled(_chunk_gradient) if ctx.compiled else _chunk_gradient
        flat, flat_target, flat_grad = grad.view(-1, grad.size(-1)), target.reshape(-1), grad_loss.reshape(-1)
        for start in range(0, flat.size(0), ctx.step):
            end = start + ctx.step
            flat[start:end] = gradient(flat[start:end], flat_target[start:end], ctx.first_row,
                                       lse[start:end], flat_grad[start:end])
        return grad, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 group: dist.ProcessGroup | None = None, compiled: bool = False) -> torch.Tensor:
    """Per-token cross entropy (fp32, ``target``'s shape) of ``logits`` [..., V/TP], this rank's rows of
    the vocabulary in TP-rank order, against ``target`` [...]; ``compiled``: each chunk one compiled kernel (GPU)."""
    return _VocabParallelCrossEntropy.apply(logits, target, group, compiled)


@torch.no_grad()
def vocab_parallel_entropy(logits: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Per-token entropy (fp32) of the softmax of ``logits`` [..., V/TP] split across ``group`` like
    vocab_parallel_cross_entropy's: H = lse - sum(p x logit), from three sums over the ranks. No gradient."""
    logits = logits.float()
    top = logits.amax(-1, keepdim=True)
    split = group is not None and dist.get_world_size(group) > 1
    if split:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    weights = torch.exp(logits - top)
    sums = torch.stack([weights.sum(-1), (weights * logits).sum(-1)])
    if split:
        dist.all_reduce(sums, group=group)
    return top.squeeze(-1) + torch.log(sums[0]) - sums[1] / sums[0]
