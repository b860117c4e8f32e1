"""The SFT entry points run on ChatML shards written by tools/preprocess_data.py --chatml, and their
loss is Qwen's masked SFT loss.

The reference for the loss is outside our code: transformers' Qwen2ForCausalLM on the trained
checkpoint's weights, with labels built here by the rule of Qwen's own finetune.py (system and
user content ignored, assistant role header ignored, every <|im_start|>, <|im_end|> and trailing
newline trained) and transformers' own shifted, ignore-index cross-entropy.
"""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env, torchrun
from hf_fixtures import hf_model

from megatron_qwen.config.model import model_preset
from megatron_qwen.hf.layouts import to_hf_state_dict

SMALL_QWEN_VOCAB = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176",
                    "--num-layers", "2"]
SEQ_LENGTH = 64
IGNORE = -100  # transformers' ignore index, as in Qwen's finetune.py


def conversations() -> list[list[dict]]:
    """Eight conversations of different lengths (so a per-conversation average differs from the
    token-weighted one), every one with an explicit system message."""
    systems = ["You are a careful calculator.", "You are a helpful assistant that checks every sum twice."]
    convs = []
    for k in range(8):
        a, b = 3 * k + 1, 17 * k + 5
        reply = str(a + b) if k % 2 == 0 else f"{a} + {b} = {a + b}. Adding the units first gives the same."
        convs.append([{"role": "system", "content": systems[1 if k % 3 == 0 else 0]},
                      {"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": reply}])
    return convs


@pytest.fixture(scope="module")
def chat_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    with open(tmp / "chat.jsonl", "w") as f:
        for messages in conversations():
            f.write(json.dumps({"messages": messages}) + "\n")
    proc = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(tmp / "chat.jsonl"),
                           "--output-prefix", str(tmp / "arith"), "--chatml", "--log-interval", "0"],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, str(tmp / "arith_messages_document")


def qwen_finetune_labels(messages: list[dict], tok) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as Qwen's finetune.py builds them: labels aligned with the inputs
    (the model shifts them), IGNORE where a token is not a training target."""
    nl = tok.tokenize("\n")
    ids, labels = [], []
    for m in messages:
        role, body = tok.tokenize(m["role"]), tok.tokenize(m["content"])
        ids += [tok.im_start_id, *role, *nl, *body, tok.im_end_id, *nl]
        trained_body = body if m["role"] == "assistant" else [IGNORE] * len(body)
        labels += [tok.im_start_id, *[IGNORE] * (len(role) + len(nl)), *trained_body, tok.im_end_id, *nl]
    return ids, labels


def hf_qwen2_of_checkpoint(save, tmp_path):
    """transformers' Qwen2 with the weights of the latest checkpoint under ``save`` (any TP layout)."""
    weights = tmp_path / "weights.pt"
    proc = subprocess.run([sys.executable, "tests/sft_checkpoint_weights.py", str(save), str(weights)],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = model_preset("tiny-qwen-vocab").with_overrides(hidden_size=64, ffn_hidden_size=176, num_layers=2)
    model = hf_model(cfg)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(torch.load(weights), cfg, "qwen2"), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


def test_sft_math_first_loss_is_qwens_masked_loss(chat_shards, tmp_path):
    """First-iteration loss of sft_math == sum of cross-entropy over Qwen's trained targets of the
    whole global batch / their count, computed by transformers' Qwen2 on the same weights.

    Data layout: 8 conversations = --global-batch-size 8, --split 100,0,0, --no-pack-sft,
    --train-iters 1: the run's only global batch is one shuffled epoch, i.e. each conversation
    exactly once, one per padded sample; every conversation is shorter than --seq-length + 1,
    so none is truncated. --lr 0 keeps the saved weights the ones the first step ran with."""
    _, prefix = chat_shards
    metrics, save = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    torchrun(1, ["-m", "megatron_qwen.sft_math", *SMALL_QWEN_VOCAB, "--no-finetune", "--data-path", prefix,
                 "--split", "100,0,0", "--no-pack-sft", "--seq-length", str(SEQ_LENGTH),
                 "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "1",
                 "--lr", "0", "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "1234",
                 "--save", str(save), "--metrics-file", str(metrics)])
    (row,) = [json.loads(line) for line in open(metrics) if "lm_loss" in line]
    assert row["iteration"] == 1 and row["lr"] == 0.0
    run_loss = row["lm_loss"]

    model = hf_qwen2_of_checkpoint(save, tmp_path)

    from megatron_qwen.tokenizer import encode_chat, load_tokenizer

    tok = load_tokenizer()
    loss_sum, count = 0.0, 0
    token_losses, label_lists, input_lists = [], [], []
    for messages in conversations():
        ids, labels = qwen_finetune_labels(messages, tok)
        # Our encoder writes the shards; it must give the same ids and trained positions.
        enc_ids, enc_mask = encode_chat(messages, tok)
        assert enc_ids == ids and enc_mask == [int(x != IGNORE) for x in labels]
        assert len(ids) <= SEQ_LENGTH + 1  # no truncation
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(x != IGNORE for x in labels[1:])  # transformers shifts: targets are labels[1:]
        loss_sum += out.loss.item() * n
        count += n
        logits = out.logits[0, :-1].double()
        token_losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none"))
        label_lists.append(torch.tensor(labels))
        input_lists.append(ids)
    reference = loss_sum / count
    assert run_loss == pytest.approx(reference, rel=1e-5, abs=0)

    # The data tell the masked loss from the plausible wrong ones (each > 5x the tolerance away), so
    # the match above is not luck of the data.
    def pooled(weights_per_conv):
        return (sum(float((ce * w).sum()) for ce, w in zip(token_losses, weights_per_conv))
                / sum(float(w.sum()) for w in weights_per_conv))

    targets = [(lab[1:] != IGNORE).double() for lab in label_lists]
    assert pooled(targets) == pytest.approx(reference, rel=1e-6)  # the manual CE agrees with transformers'
    wrong = {
        "every token": pooled([torch.ones_like(t) for t in targets]),
        "mask not shifted": pooled([(lab[:-1] != IGNORE).double() for lab in label_lists]),
        "assistant content only": pooled([_assistant_content_targets(ids, lab, tok) for ids, lab in
                                          zip(input_lists, label_lists)]),
        "mean of per-conversation means": sum(float((ce * t).sum() / t.sum()) for ce, t in
                                              zip(token_losses, targets)) / len(targets),
    }
    for name, value in wrong.items():  # measured: 1e-4 ("every token") to 2.3e-3 relative away
        assert abs(value - run_loss) > 5e-5 * run_loss, \
            f"the data cannot tell the masked loss from {name!r} ({value} vs {run_loss})"


def _assistant_content_targets(ids: list[int], labels: torch.Tensor, tok) -> torch.Tensor:
    """Targets of the trained labels that are not ChatML control tokens or their newline."""
    nl = set(tok.tokenize("\n"))
    control = {tok.im_start_id, tok.im_end_id}
    keep = [int(lab != IGNORE and lab not in control and not (lab in nl and ids[i - 1] == tok.im_end_id))
            for i, lab in enumerate(labels.tolist())]
    return torch.tensor(keep[1:], dtype=torch.float64)


def test_sft_trains_at_tp2_with_sequence_parallel_and_dropout(chat_shards, tmp_path):
    """Chat SFT (the recipe's dropout 0.1) under TP2 + sequence parallelism and packing: the training loss
    falls, and the validation loss (dropout off) is Qwen's masked loss of the validation conversations,
    computed by transformers on the saved weights with Qwen's finetune.py labels.

    --split 75,25,0 leaves conversations 6 and 7 to validation; each fills more than half of
    --seq-length, so no sample packs both, and the 4 validation samples (--eval-iters 1 x
    --global-batch-size 4) are two shuffled epochs: each conversation twice, the pooled loss theirs."""
    _, prefix = chat_shards
    metrics, save, iters = tmp_path / "sft.jsonl", tmp_path / "ckpt", 4
    out = torchrun(2, ["-m", "megatron_qwen.sft", *SMALL_QWEN_VOCAB, "--no-finetune", "--data-path", prefix,
                       "--split", "75,25,0", "--seq-length", str(SEQ_LENGTH), "--micro-batch-size", "2",
                       "--global-batch-size", "4", "--train-iters", str(iters), "--eval-interval", str(iters),
                       "--eval-iters", "1", "--tensor-model-parallel-size", "2", "--sequence-parallel",
                       "--lr", "1e-3", "--save", str(save), "--metrics-file", str(metrics)])
    rows = [json.loads(line) for line in open(metrics)]
    train = [r["lm_loss"] for r in rows if "lm_loss" in r]
    assert len(train) == iters and train[-1] < train[0] - 0.1, train  # measured: 11.92 to 11.68

    model = hf_qwen2_of_checkpoint(save, tmp_path)
    from megatron_qwen.tokenizer import load_tokenizer

    tok = load_tokenizer()
    loss_sum, count = 0.0, 0
    for messages in conversations()[6:]:
        ids, labels = qwen_finetune_labels(messages, tok)
        assert SEQ_LENGTH / 2 < len(ids) - 1 <= SEQ_LENGTH
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        n = sum(x != IGNORE for x in labels[1:])
        loss_sum, count = loss_sum + loss * n, count + n
    (validation,) = [r["validation_loss"] for r in rows if "validation_loss" in r]
    assert validation == pytest.approx(loss_sum / count, rel=1e-5), (validation, loss_sum / count)
    assert "megatron-qwen sft" in out
    # The resolved configuration printed at start: dropout is on in this run.
    for name in ("hidden_dropout", "attention_dropout"):
        assert re.search(rf"\b{name} \.+ 0\.1$", out, re.MULTILINE), f"{name} is not 0.1 in the run's configuration"
