"""The SFT entry points run on ChatML shards written by tools/preprocess_data.py --chatml."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, quiet_env, torchrun

SMALL_QWEN_VOCAB = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176",
                    "--num-layers", "2"]


@pytest.fixture(scope="module")
def chat_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    with open(tmp / "chat.jsonl", "w") as f:
        for a in range(30):
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You are a careful calculator."},
                {"role": "user", "content": f"What is {a} + {2 * a + 1}?"},
                {"role": "assistant", "content": str(3 * a + 1)}]}) + "\n")
    proc = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(tmp / "chat.jsonl"),
                           "--output-prefix", str(tmp / "arith"), "--chatml", "--log-interval", "0"],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, str(tmp / "arith_messages_document")


@pytest.mark.parametrize("job,nproc,extra", [
    ("sft_math", 1, []),
    ("sft", 2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),  # dropout 0.1 under TP+SP
])
def test_sft_entry_point_trains(chat_shards, job, nproc, extra):
    tmp, prefix = chat_shards
    metrics = tmp / f"{job}.jsonl"
    out = torchrun(nproc, ["-m", f"megatron_qwen.{job}", *SMALL_QWEN_VOCAB, "--no-finetune", "--data-path", prefix,
                           "--split", "90,10,0", "--seq-length", "64", "--micro-batch-size", "2",
                           "--global-batch-size", "4", "--train-iters", "3", "--eval-interval", "3",
                           "--eval-iters", "1", "--metrics-file", str(metrics), *extra])
    rows = [json.loads(line) for line in open(metrics)]
    train = [r for r in rows if "lm_loss" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["lm_loss"]) for r in train)
    assert any("validation_loss" in r for r in rows)
    assert f"megatron-qwen {job}" in out
