"""The chunked vocab-parallel loss (model/loss.py) is torch's cross entropy: values and logits gradients,
in fp32 and bf16, over one chunk or many; and, inside the model at TP 2, the same loss and parameter
gradients as torch's cross entropy over the gathered logits (with megatron-core's own loss alongside)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import torchrun

from megatron_qwen.model import loss as chunked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_loss_and_gradient_are_torch_cross_entropy(monkeypatch, dtype, chunk_rows):
    vocab = 50
    if chunk_rows:  # 18 tokens in chunks of 7: a short last chunk too
        monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", chunk_rows * vocab)
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(6, 3, vocab, generator=g)).to(dtype)
    target = torch.randint(0, vocab, (6, 3), generator=g)
    upstream = torch.rand(6, 3, generator=g)  # a per-token weight, as the loss mask and scale give

    ours_in = logits.clone().requires_grad_()
    ours = chunked.vocab_parallel_cross_entropy(ours_in * 1, target)  # a non-leaf, as the output layer's
    (ours * upstream).sum().backward()
    ref_in = logits.clone().requires_grad_()
    ref = F.cross_entropy(ref_in.float().view(-1, vocab), target.view(-1), reduction="none").view(6, 3)
    (ref * upstream).sum().backward()

    assert ours.dtype == torch.float32 and ours.shape == (6, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    assert ours_in.grad.dtype == dtype
    # bf16: both round the same fp32 gradient once
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-6 if dtype == torch.float32 else 0,
                               atol=1e-6 if dtype == torch.float32 else 0)


WORKER = r"""
import torch, torch.distributed as dist, torch.nn.functional as F
import megatron_qwen.model.loss as chunked
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.model.builder import build_model, wrap_for_training
from megatron_qwen.platform.distributed import init_distributed
from megatron.core import parallel_state

chunked.CHUNK_ELEMENTS = 5 * 1024 // 2  # 32 tokens over 512 rows per rank: seven chunks, the last short
results = []
for flags in ([], ["--no-cross-entropy-fusion"], ["--bf16"]):
    cfg = parse_run_config(PRETRAIN, ["--mock-data", "--model-size", "tiny", "--num-layers", "2", "--seq-length",
                                      "16", "--micro-batch-size", "2", "--global-batch-size", "2",
                                      "--tensor-model-parallel-size", "2", *flags])
    if not parallel_state.model_parallel_is_initialized():
        init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    (model,) = wrap_for_training(build_model(cfg.model, cfg.parallel, cfg.build), cfg.parallel, False)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 17), generator=g)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    position_ids = torch.arange(16).expand(2, 16)
    upstream = torch.rand(2, 16, generator=g)

    def run(with_labels):
        model.zero_grad_buffer()
        for p in model.parameters():
            p.grad = None
        if with_labels:
            loss = model(inputs, position_ids, None, labels=labels)
        else:
            local = model(inputs, position_ids, None).float()  # [b, s, V/TP]
            shards = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(shards, local)
            # this rank's rows carry the gradient to its shard of the output layer
            full = torch.cat([local if r == dist.get_rank() else shards[r] for r in range(len(shards))], -1)
            loss = F.cross_entropy(full.view(-1, full.size(-1)), labels.reshape(-1), reduction="none").view(2, 16)
        (loss.float() * upstream).sum().backward()
        model.finish_grad_sync()
        return loss.detach().float(), {n: p.main_grad.clone() for n, p in model.named_parameters()}

    loss, grads = run(True)
    ref_loss, ref_grads = run(False)
    loss_err = ((loss - ref_loss).abs().max() / ref_loss.abs().max()).item()
    grad_err = max(((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-12)).item() for n in grads)
    results.append(f"{' '.join(flags) or 'default'}: loss {loss_err:.3g} grad {grad_err:.3g}")
if dist.get_rank() == 0:
    print("RESULTS", " | ".join(results))
"""


def test_model_loss_at_tp2_is_cross_entropy_of_the_gathered_logits(tmp_path):
    """Independent reference: the model's own logits, gathered over TP, into torch's cross entropy."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = torchrun(2, [str(script)], timeout=300)
    line = next(x for x in out.splitlines() if x.startswith("RESULTS"))
    for result in line.removeprefix("RESULTS ").split(" | "):
        name, rest = result.split(": ")
        loss_err, grad_err = float(rest.split()[1]), float(rest.split()[3])
        assert loss_err < 1e-5 and grad_err < 1e-5, line
