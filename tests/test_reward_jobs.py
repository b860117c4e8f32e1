"""python -m megatron_qwen.reward end to end, started from a Hugging Face language model (the head fresh), on
pair shards written by tools/preprocess_data.py --pairs:

- it learns what the data says: when the chosen response always holds a marker word the rejected one lacks,
  the held-out pairs (the validation split, never trained on) are ranked right nearly always; when the same
  pairs are labelled at random, held-out accuracy stays near chance;
- a run stopped by --exit-interval and started again with the same command equals the uninterrupted run;
- the Hugging Face export (Qwen2ForSequenceClassification) read by transformers, on ids its own chat template
  builds and with its own pooling over right-padded batches, gives our rewards (tools/evaluate_reward.py's)
  within 1e-5 in fp32.
"""

import json
import random

import pytest
import torch
from conftest import load_tool, run_module
from hf_fixtures import hf_model, transformers

from megatron_qwen.config.model import model_preset

SHAPE = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176", "--num-layers", "2"]
WORDS = "apple river stone cloud music green quiet table light paper window garden".split()
MARKER = "indeed"
TRAIN_ITERS, EXIT_AT = 8, 4


def marker_pairs(n: int, seed: int) -> list[dict]:
    """The chosen reply holds MARKER at a random place, the rejected one does not."""
    rng = random.Random(seed)

    def reply() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]

    rows = []
    for _ in range(n):
        chosen, rejected = reply(), reply()
        chosen.insert(rng.randint(0, len(chosen)), MARKER)
        rows.append({"prompt": f"Tell me about {rng.choice(WORDS)}", "chosen": " ".join(chosen),
                     "rejected": " ".join(rejected)})
    return rows


def randomly_labelled(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [r if rng.random() < 0.5 else {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Pair shards (marker and random labels: 320 training pairs, 64 validation pairs each), a held-out jsonl,
    and a tiny Hugging Face language model to start from."""
    tmp = tmp_path_factory.mktemp("reward_jobs")
    rows = marker_pairs(384, seed=0)
    for name, data in (("marker", rows), ("random", randomly_labelled(rows, seed=1)),
                       ("heldout", marker_pairs(16, seed=2))):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    preprocess = load_tool("preprocess_data")
    assert preprocess.main(["--input", str(tmp / "marker.jsonl"), str(tmp / "random.jsonl"), "--output-prefix",
                            str(tmp / "pairs"), "--pairs", "--log-interval", "0", "--workers", "1"]) == 0
    cfg = model_preset("tiny-qwen-vocab").with_overrides(hidden_size=64, ffn_hidden_size=176, num_layers=2)
    torch.manual_seed(0)
    hf_model(cfg).save_pretrained(tmp / "base_lm")
    return tmp


def train(setup, data: str, name: str, *extra: str) -> dict[int, dict]:
    """A reward run from the Hugging Face language model (which fixes the shape); its metrics by iteration."""
    metrics = setup / f"{name}_metrics.jsonl"
    proc = run_module("megatron_qwen.reward", [
        "--load", str(setup / "base_lm"), "--data-path", str(setup / f"pairs_{data}_pairs_document"),
        "--split", "5,1,0", "--seq-length", "48", "--micro-batch-size", "8", "--global-batch-size", "32",
        "--lr", "2e-3", "--train-iters", str(TRAIN_ITERS), "--eval-interval", str(TRAIN_ITERS), "--eval-iters", "4",
        "--metrics-file", str(metrics), *extra])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loaded weights only from Hugging Face model" in proc.stdout or "continuing at iteration" in proc.stdout
    rows: dict[int, dict] = {}
    for line in open(metrics):  # an iteration's training and validation figures, together
        row = json.loads(line)
        rows.setdefault(row["iteration"], {}).update(row)
    return rows


@pytest.fixture(scope="module")
def marker_run(setup):
    return train(setup, "marker", "marker", "--save", str(setup / "marker_ckpt"))


@pytest.fixture(scope="module")
def random_run(setup):
    return train(setup, "random", "random")


def test_marker_pairs_are_learned_and_random_labels_are_not(marker_run, random_run):
    marker, chance = (run[TRAIN_ITERS]["validation_pair_accuracy"] for run in (marker_run, random_run))
    print(f"\nheld-out pair accuracy after {TRAIN_ITERS} steps (64 validation pairs): marker {marker:.3f}, "
          f"random labels {chance:.3f}")
    assert marker >= 0.95, marker_run[TRAIN_ITERS]
    assert 0.3 <= chance <= 0.7, random_run[TRAIN_ITERS]
    first, last = marker_run[1], marker_run[TRAIN_ITERS]
    assert last["reward_loss"] < first["reward_loss"] and last["reward_margin"] > first["reward_margin"]


def test_resume_equals_the_uninterrupted_run(setup, random_run):
    save = str(setup / "resumed_ckpt")
    stopped = train(setup, "random", "resumed", "--save", save, "--exit-interval", str(EXIT_AT))
    assert max(stopped) == EXIT_AT
    resumed = train(setup, "random", "resumed", "--save", save, "--exit-interval", str(EXIT_AT))
    assert max(resumed) == TRAIN_ITERS
    for it in range(1, TRAIN_ITERS + 1):
        for key in ("reward_loss", "pair_accuracy", "reward_margin"):
            a, b = resumed[it][key], random_run[it][key]
            assert abs(a - b) <= 1e-6 * max(abs(b), 1e-3), (it, key, a, b)


def test_export_gives_transformers_our_rewards(setup, marker_run):
    from megatron_qwen.evaluation.reward import evaluate_reward
    from megatron_qwen.hf.export import export_hf
    from megatron_qwen.platform.distributed import destroy_distributed
    from megatron_qwen.tokenizer import load_tokenizer

    heldout = str(setup / "heldout.jsonl")
    try:
        report = evaluate_reward(str(setup / "marker_ckpt"), None, [f"heldout={heldout}"], None, 4, load_tokenizer())
    finally:
        destroy_distributed()
    ours = report["sets"]["heldout"]
    assert ours["pairs"] == 16 and ours["accuracy"] >= 0.9
    export_hf(str(setup / "marker_ckpt"), str(setup / "hf_rm"), "qwen2")
    assert not (setup / "hf_rm" / "generation_config.json").exists()  # a reward model generates nothing
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        setup / "hf_rm", dtype=torch.float32, attn_implementation="eager").eval()
    assert type(model).__name__ == "Qwen2ForSequenceClassification"
    tok = transformers.AutoTokenizer.from_pretrained(setup / "hf_rm")
    sequences = []
    for row in map(json.loads, open(heldout)):
        for reply in (row["chosen"], row["rejected"]):
            ids = tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                           {"role": "assistant", "content": reply}], tokenize=True, return_dict=False)
            assert ids[-2:] == [tok.convert_tokens_to_ids("<|im_end|>"), *tok.encode("\n")]
            sequences.append(ids[:-1])  # our sequence ends at the response's <|im_end|> (docs/qwen.md section 11)
    width = max(map(len, sequences))
    pad = model.config.pad_token_id
    assert pad == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        theirs = model(input_ids=input_ids, attention_mask=(input_ids != pad).long()).logits.view(-1, 2)
    expected = torch.tensor(ours["rewards"])
    error = (theirs - expected).abs().max().item()
    print(f"\ntransformers on the export vs ours, {expected.numel()} rewards up to {expected.abs().max():.3f}: "
          f"largest difference {error:.2e}")
    assert error <= 1e-5 * max(1.0, expected.abs().max().item()), (theirs, expected)


def test_per_split_paths_give_one_epoch_and_named_sets_with_reward_figures(setup):
    """--train/valid/test-data-path (docs/launching.md) in a reward run: without a budget it trains one epoch of
    --train-data-path's pairs; each validation set, and the test set at the end, logs the reward model's figures
    under its name."""
    metrics = setup / "named_metrics.jsonl"
    marker, randomly = (str(setup / f"pairs_{data}_pairs_document") for data in ("marker", "random"))
    proc = run_module("megatron_qwen.reward", [
        "--load", str(setup / "base_lm"), "--train-data-path", marker, "--valid-data-path", marker, randomly,
        "--multiple-validation-sets", "--validation-set-names", "marker", "random", "--test-data-path", randomly,
        "--seq-length", "48", "--micro-batch-size", "16", "--global-batch-size", "128", "--lr", "2e-3",
        "--eval-interval", "3", "--eval-iters", "1", "--metrics-file", str(metrics)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(metrics)]
    steps = [r for r in rows if "reward_loss" in r]
    assert [r["iteration"] for r in steps] == list(range(1, 7))  # 384 pairs, 64 a step
    assert steps[-1]["train_iters"] == 6 and "pair_accuracy" in steps[-1]
    for name in ("validation-marker", "validation-random"):
        evals = [r for r in rows if f"{name}_loss" in r]
        assert [r["iteration"] for r in evals] == [3, 6], rows
        assert all(0 <= r[f"{name}_pair_accuracy"] <= 1 and f"{name}_reward_margin" in r for r in evals)
    (test,) = [r for r in rows if "test_loss" in r]
    assert test["iteration"] == 6 and "test_pair_accuracy" in test and "test_ppl" not in test


def test_a_reward_checkpoint_is_no_language_model(setup, marker_run):
    """A job of another head refuses it before starting, in one line."""
    from megatron_qwen.config.errors import ConfigError
    from megatron_qwen.config.recipes import SFT
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.preflight import check_run

    cfg = parse_run_config(SFT, [*SHAPE, "--load", str(setup / "marker_ckpt"), "--mock-data", "--seq-length", "48"])
    with pytest.raises(ConfigError, match="holds a reward model, which has no output layer"):
        check_run(cfg, 1)
