"""Code-Qwen continued pretraining starts from the base checkpoint's weights: its first loss is
the base model's loss on the same batch at the longer context, computed independently here."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, quiet_env, run_module, torchrun

BASE = ["--model-size", "tiny", "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr", "1e-3", "--eval-interval", "1000", "--seed", "3"]
CODE = ["--seq-length", "64", "--train-iters", "2", "--lr-warmup-iters", "1"]

REFERENCE = r"""
import json, sys, torch
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.config.recipes import PRETRAIN_CODE
from megatron_qwen.inference import load_model_for_inference
from megatron_qwen.training.batches import collate
from megatron_qwen.training.datasets import build_datasets

cfg = parse_run_config(PRETRAIN_CODE, json.loads(sys.argv[1]))
train, _, _ = build_datasets(cfg)
batch = collate([train[i] for i in range(cfg.train.global_batch_size)])
from megatron_qwen.model.init import initialize_weights

model = load_model_for_inference(cfg.checkpoint.load)
mask = batch["loss_mask"].float()

def loss():
    with torch.no_grad():
        per_token = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return float((per_token.float() * mask).sum() / mask.sum())

print("REFERENCE_LOSS", loss())
initialize_weights([model], cfg.model, cfg.build.seed)  # the untrained model, for contrast
print("UNTRAINED_LOSS", loss())
"""


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A base model trained 3 iterations at TP2: what Code-Qwen starts from, in both tests."""
    ckpt = tmp_path_factory.mktemp("base") / "ckpt"
    torchrun(2, ["-m", "megatron_qwen.pretrain", *BASE, "--seq-length", "32", "--train-iters", "3",
                 "--tensor-model-parallel-size", "2", "--save", str(ckpt)])
    return ckpt


def test_code_qwen_starts_from_base_weights(tmp_path, base_ckpt):
    code_args = [*BASE, *CODE, "--load", str(base_ckpt)]
    metrics = tmp_path / "code.jsonl"
    out = torchrun(2, ["-m", "megatron_qwen.pretrain_code", *code_args, "--tensor-model-parallel-size", "2",
                       "--metrics-file", str(metrics), "--save", str(tmp_path / "code")])
    assert "loaded weights only" in out
    first = json.loads(open(metrics).readline())
    assert first["iteration"] == 1
    ref = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(code_args)], cwd=REPO, env=quiet_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_loss = float(ref.stdout.split("REFERENCE_LOSS")[1].split()[0])
    untrained = float(ref.stdout.split("UNTRAINED_LOSS")[1].split()[0])
    assert abs(first["lm_loss"] - ref_loss) <= 1e-5 * ref_loss, (first["lm_loss"], ref_loss)
    # Not vacuous: the untrained model's loss on that batch is measurably different.
    assert abs(untrained - ref_loss) > 100 * 1e-5 * ref_loss, (untrained, ref_loss)


def test_code_qwen_resumes_its_own_checkpoint_after_a_crash(tmp_path, base_ckpt):
    code_ckpt = tmp_path / "code"  # the base was saved at TP2; this job runs at TP1
    args = ["-m", "megatron_qwen.pretrain_code", *BASE, "--seq-length", "64", "--train-iters", "3",
            "--load", str(base_ckpt), "--save", str(code_ckpt)]
    first = run_module(args[1], [*args[2:], "--exit-interval", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_module(args[1], args[2:])  # the same command again, as a restarted job would run it
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "continuing at iteration 2" in out and "loaded model and optimizer" in out
