"""Packed SFT on every back end (model/packing.py): the dataset describes a sample's conversations once
(cu_seqlens); the local and sdpa back ends take it as a block-diagonal mask, transformer-engine and flash-attn
as megatron-core's THD layout (PackedSeqParams). The reference throughout is the same conversations run one per
sample, where plain causal attention needs no boundaries at all.

flash-attn and transformer-engine need CUDA; here their THD path runs with stand-ins written with PyTorch's sdpa
per segment (tests/varlen_stand_in.py): a core attention in fp32 in place of the flash module, which checks the
THD plumbing exactly (the step's one-row micro-batch, megatron-core's THD RoPE), and flash-attn's functions under
our FlashSelfAttention, which refuse fp32 as the real kernels do. bench/gpu/check_packed_sft.py runs the real ones.
"""

import json

import numpy as np
import pytest
import torch
from conftest import REPO, torchrun, write_sft_shards
from parity_outputs import merge
from varlen_stand_in import SegmentedSDPAAttention, flash_attn_stub, flash_attn_varlen_stub

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.data import SFTDataset
from megatron_qwen.model import attention, spec
from megatron_qwen.model.builder import build_model
from megatron_qwen.model.layout import global_param_names
from megatron_qwen.model.packing import attention_mask, packed_seq_params
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.batches import collate
from megatron_qwen.training.step import forward_step

SEQ, EOD, SAMPLES = 32, 1023, 3
PACKED_WORKER = str(REPO / "tests" / "parity" / "packed_sft_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Twelve conversations of 4 to 14 tokens, random ids and loss masks."""
    g = np.random.default_rng(0)
    docs = []
    for _ in range(12):
        n = int(g.integers(4, 15))
        docs.append((g.integers(0, 1000, n).tolist(), (g.random(n) > 0.3).astype(int).tolist()))
    prefix = str(tmp_path_factory.mktemp("packed") / "sft")
    write_sft_shards(prefix, docs)
    return prefix


@pytest.fixture(scope="module")
def packed(shards):
    """(a micro-batch of SAMPLES packed samples, the same conversations one per sample, the dataset)."""
    ds = SFTDataset(shards, 0, 12, SEQ, num_samples=SAMPLES, seed=0, pack=True, eod=EOD)
    batch = collate([ds[i] for i in range(SAMPLES)])
    docs = [doc for i in range(SAMPLES) for doc in ds.samples[i]]
    assert len(docs) > SAMPLES  # some sample holds several conversations
    return batch, collate([alone(ds, doc) for doc in docs]), ds


def alone(ds: SFTDataset, doc: int) -> dict:
    """Conversation ``doc`` as the only one of a sample, written out by hand: inputs ids[:-1], labels ids[1:],
    loss mask the stored mask[1:], padding at loss mask 0, no boundaries (plain causal attention)."""
    ids, mask = ds.tokens[doc].astype(np.int64), ds.masks[doc].astype(np.float32)
    n = len(ids) - 1
    tokens, labels, loss_mask = np.full(SEQ, EOD), np.full(SEQ, EOD), np.zeros(SEQ, np.float32)
    tokens[:n], labels[:n], loss_mask[:n] = ids[:-1], ids[1:], mask[1:]
    return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.arange(SEQ), "cu_seqlens": None}


def model(backend: str, bf16: bool = False):
    flags = ["--mock-data", "--model-size", "tiny", "--seed", "5", "--transformer-impl", backend,
             "--hidden-dropout", "0", "--attention-dropout", "0", *(["--bf16"] if bf16 else [])]
    cfg = parse_run_config(PRETRAIN, flags)
    (chunk,) = build_model(cfg.model, cfg.parallel, cfg.build)
    return chunk


def loss_and_grads(chunk, *batches: dict) -> tuple[float, dict]:
    """The training step's forward (training/step.py) of each micro-batch and a backward of the summed token
    loss: (its sum, the gradients by parameter name)."""
    chunk.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        output, loss_func = forward_step(iter([batch]), chunk, torch.device("cpu"))
        loss_sum, _, _ = loss_func(output)
        loss_sum.backward()
        total += loss_sum.item()
    return total, {n: p.grad.float().clone() for n, p in chunk.named_parameters()}


def grad_error(grads: dict, ref: dict) -> float:
    """The worst relative L2 error over the parameters."""
    return max(((grads[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)


@pytest.fixture
def flash_on_cpu(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_func", flash_attn_stub)
    monkeypatch.setattr(attention, "flash_attn_varlen_func", flash_attn_varlen_stub)


def test_cu_seqlens_match_the_mask_blocks(packed):
    """The THD row transformer-engine and flash-attn receive delimits exactly the blocks of the mask local and sdpa
    receive, and those blocks are the dataset's conversations (then the padding), each causal within."""
    batch, _, ds = packed
    mask, params = attention_mask(batch["cu_seqlens"]), packed_seq_params(batch["cu_seqlens"])
    row_bounds = []
    for i in range(SAMPLES):
        m = mask[i, 0]
        starts = [0] + [p for p in range(1, SEQ) if m[p, p - 1]]  # a position that cannot see the one before
        ends = starts[1:] + [SEQ]
        for start, end in zip(starts, ends):  # causal within the block, nothing outside it
            allowed = torch.zeros(SEQ, SEQ, dtype=torch.bool)
            allowed[start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
            assert torch.equal(~m[start:end], allowed[start:end])
        lengths = [len(ds.tokens[doc]) - 1 for doc in ds.samples[i]]
        assert [e - s for s, e in zip(starts, ends)][:len(lengths)] == lengths
        assert sum(ends[k] - starts[k] for k in range(len(lengths), len(starts))) == SEQ - sum(lengths)
        row_bounds += [i * SEQ + s for s in starts]
    assert params.qkv_format == "thd" and params.cu_seqlens_q.tolist() == row_bounds + [SAMPLES * SEQ]
    assert params.max_seqlen_q == max(b - a for a, b in zip(row_bounds, row_bounds[1:] + [SAMPLES * SEQ]))


@pytest.mark.parametrize("backend", ["local", "sdpa"])
def test_packed_batch_equals_one_conversation_per_sample(single_process, packed, backend):
    """fp32: the packed micro-batch's summed token loss and every gradient equal those of its conversations run
    one per sample (1e-5; the CPU measures 8e-8 and 4e-7); dropping the boundaries moves them by 3e-4 and 0.96."""
    batch, one_each, _ = packed
    chunk = model(backend)
    ref_loss, ref_grads = loss_and_grads(chunk, one_each)
    loss, grads = loss_and_grads(chunk, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and grad_error(grads, ref_grads) < 1e-5
    leaked_loss, leaked_grads = loss_and_grads(chunk, {**batch, "cu_seqlens": None})
    assert abs(leaked_loss - ref_loss) > 10 * 1e-5 * ref_loss and grad_error(leaked_grads, ref_grads) > 0.1


def test_thd_stand_in_equals_the_mask_path(single_process, packed, monkeypatch):
    """fp32: a back end that takes cu_seqlens (flash's spec, its core attention replaced by sdpa per segment) gives
    the mask path's loss and gradients on the packed micro-batch, which it runs as one THD row."""
    batch, _, _ = packed
    mask_loss, mask_grads = loss_and_grads(model("sdpa"), batch)
    monkeypatch.setattr(spec, "FlashSelfAttention", SegmentedSDPAAttention)
    thd = model("flash")
    assert thd.packed_form == "thd"
    loss, grads = loss_and_grads(thd, batch)
    assert loss == pytest.approx(mask_loss, rel=1e-5) and grad_error(grads, mask_grads) < 1e-5


def test_flash_runs_packed_and_padded_sft(single_process, packed, flash_on_cpu):
    """bf16 (flash-attn refuses fp32, and so does the stub): FlashSelfAttention's varlen call on the packed
    micro-batch gives the loss and gradients of the same conversations one per sample, where flash gets no mask
    at all. Tolerances: bf16's; the CPU measures 0 on the loss and 1e-4 on the gradients, while dropping the
    boundaries moves the gradients by 0.96."""
    batch, one_each, _ = packed
    chunk = model("flash", bf16=True)
    ref_loss, ref_grads = loss_and_grads(chunk, one_each)
    loss, grads = loss_and_grads(chunk, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-4) and grad_error(grads, ref_grads) < 2e-2
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):
        loss_and_grads(model("flash"), one_each)


def test_packed_sft_at_pp2_equals_pp1(single_process, tmp_path, monkeypatch):
    """A packed global batch at PP 2 gives the loss and first-step gradients of the same micro-batches run through
    one process (1e-5): every stage's attention keeps the conversations apart, in the mask form (local) and in
    the THD form (the stand-in's), whose one-row micro-batches change the shape the stages exchange."""
    pp2 = ["--pipeline-model-parallel-size", "2"]
    torchrun(2, [PACKED_WORKER, "--out", str(tmp_path), "--layouts", json.dumps(
        {"mask": ["--transformer-impl", "local", *pp2], "thd": ["--transformer-impl", "flash", *pp2]})])
    monkeypatch.setattr(spec, "FlashSelfAttention", SegmentedSDPAAttention)
    for form, backend in (("mask", "local"), ("thd", "flash")):
        chunk = model(backend)
        assert chunk.packed_form == form
        got = tmp_path / form
        batches = torch.load(got / "batches.pt")
        tokens = sum(float(b["loss_mask"].sum()) for b in batches)
        loss_sum, grads = loss_and_grads(chunk, *batches)
        assert json.load(open(got / "loss.json")) == pytest.approx(loss_sum / tokens, rel=1e-5), form
        names = global_param_names(chunk)
        g = merge(got, "grads")
        assert g.keys() == set(names.values())
        for name, ref in grads.items():
            ref = ref / tokens  # megatron-core divides by the global batch's token count
            err = (g[names[name]] - ref).abs().max().item()
            assert err <= 1e-5 * max(ref.abs().max().item(), 1e-3), f"{form}: grad of {name} off by {err}"
