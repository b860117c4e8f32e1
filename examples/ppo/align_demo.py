"""PPO aligns, end to end, at tiny scale on one CPU (docs/ppo.md, "It aligns"):

    python examples/ppo/align_demo.py                # the full demonstration and its figures (minutes)
    python examples/ppo/align_demo.py --quick        # the reduced run tests/test_ppo_align.py makes

1. Synthetic data with a property a rule can count: the marker word MARKER. SFT conversations answer a prompt
   with one word, the marker in about a quarter of them; preference pairs prefer a reply holding the marker.
2. tools/preprocess_data.py --chatml / --pairs, then python -m megatron_qwen.sft (a tiny Qwen from fresh
   weights) and python -m megatron_qwen.reward (from the SFT checkpoint).
3. python -m megatron_qwen.ppo twice from them: at the report's --kl-coef 0.04, and at a very high one.
4. The policy before and after each run samples replies to held-out prompts (never in the PPO prompt set) with
   the rollouts' top-p; the marker's frequency is counted in the decoded text (the rule, not the reward model),
   and the KL to the reference is the job's estimate (summed log-ratio per response) on those samples.
5. tools/plot_metrics.py draws both runs' curves.

The stages run in this one process (each entry point's main, which leaves no process group behind); each prints
the command line that runs it alone. The LRs are far above the report's (1e-6 policy, 5e-6 value): a model this
small, trained from scratch for seconds, moves nowhere at those.
"""

import argparse
import importlib.util
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_qwen.config import recipes
from megatron_qwen.config.recipes import PPO
from megatron_qwen.data.prompts import read_prompts
from megatron_qwen.inference.generate import Sampling
from megatron_qwen.platform.distributed import compute_device, destroy_distributed, init_distributed
from megatron_qwen.tokenizer import load_tokenizer
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.entry import main as run_entry_point
from megatron_qwen.training.ppo_checkpoint import PPOCheckpointer
from megatron_qwen.training.ppo_loop import PPOJob
from megatron_qwen.training.ppo_models import build_ppo_models, load_frozen, start_weights
from megatron_qwen.training.ppo_objective import RunningMean, kl_to_reference

REPO = Path(__file__).resolve().parent.parent.parent

MARKER = "please"  # one token of Qwen's vocabulary, as every word here
WORDS = "apple river stone cloud music green table light paper window".split()
TOPICS = "rain bread boats winter songs roads birds lamps maps coins gold trees".split()
HELDOUT_TOPICS = "clocks ships hills".split()
MARKER_SHARE = 0.25  # of the SFT replies
MODEL = ["--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176", "--num-layers", "2",
         "--transformer-impl", "local", "--seq-length", "32"]


@dataclass(frozen=True)
class Size:
    sft_iters: int
    reward_iters: int
    ppo_iters: int
    warmup_iters: int
    heldout_samples: int  # per held-out prompt


FULL = Size(sft_iters=120, reward_iters=24, ppo_iters=24, warmup_iters=2, heldout_samples=64)
QUICK = Size(sft_iters=80, reward_iters=12, ppo_iters=8, warmup_iters=1, heldout_samples=32)
HIGH_KL = 10.0


def prompt(topic: str) -> str:
    return f"Say one word about {topic}."


def write_data(work: Path, seed: int = 0) -> None:
    """SFT conversations, preference pairs, PPO prompts and held-out prompts as JSONL under ``work``."""
    rng = random.Random(seed)

    def reply() -> str:
        return MARKER if rng.random() < MARKER_SHARE else rng.choice(WORDS)

    def user(topic: str) -> dict:
        return {"role": "user", "content": prompt(topic)}

    def lines(path: str, rows) -> None:
        (work / path).write_text("".join(json.dumps(r) + "\n" for r in rows))

    lines("sft.jsonl", ({"messages": [user(rng.choice(TOPICS)), {"role": "assistant", "content": reply()}]}
                        for _ in range(512)))
    lines("pairs.jsonl", ({"prompt": prompt(rng.choice(TOPICS)), "chosen": MARKER, "rejected": rng.choice(WORDS)}
                          for _ in range(384)))
    lines("prompts.jsonl", ({"prompt": prompt(t)} for t in TOPICS))
    lines("heldout.jsonl", ({"prompt": prompt(t)} for t in HELDOUT_TOPICS))


def announce(module: str, argv: list[str]) -> None:
    print(f"\n$ python {module} {' '.join(argv)}", flush=True)


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preprocess(work: Path) -> None:
    tool = load_tool("preprocess_data")
    for kind, name in (("--chatml", "sft"), ("--pairs", "pairs")):
        argv = ["--input", str(work / f"{name}.jsonl"), "--output-prefix", str(work / name), kind,
                "--log-interval", "0", "--workers", "1"]
        announce("tools/preprocess_data.py", argv)
        if tool.main(argv) != 0:
            sys.exit(f"error: tools/preprocess_data.py {' '.join(argv)} failed")


def run_job(recipe_name: str, argv: list[str]) -> dict:
    announce(f"-m megatron_qwen.{recipe_name.lower()}", argv)
    return run_entry_point(getattr(recipes, recipe_name), argv)


def ppo_flags(work: Path, size: Size, kl_coef: float) -> list[str]:
    """The PPO runs' flags: 8 prompts x 2 responses of up to 4 tokens per iteration."""
    return [*MODEL, "--load", str(work / "sft"), "--reward-model", str(work / "reward"),
            "--max-new-tokens", "4", "--micro-batch-size", "8", "--global-batch-size", "16",
            "--lr", "2e-3", "--value-lr", "2e-3", "--kl-coef", str(kl_coef), "--value-warmup-iters",
            str(size.warmup_iters), "--train-iters", str(size.ppo_iters), "--seed", "7"]


def train_models(work: Path, size: Size) -> dict[str, list[str]]:
    """SFT, reward model, and the two PPO runs; the PPO runs' flags by name."""
    run_job("SFT", [*MODEL, "--no-finetune", "--data-path", str(work / "sft_messages_document"), "--split", "1,0,0",
                    "--micro-batch-size", "16", "--global-batch-size", "16", "--lr", "1e-2", "--min-lr", "1e-3",
                    "--lr-warmup-iters", "5", "--train-iters", str(size.sft_iters), "--save", str(work / "sft"),
                    "--metrics-file", str(work / "sft.jsonl"), "--seed", "3"])
    run_job("REWARD", [*MODEL, "--load", str(work / "sft"), "--data-path", str(work / "pairs_pairs_document"),
                       "--split", "1,0,0", "--micro-batch-size", "16", "--global-batch-size", "32", "--lr", "2e-3",
                       "--train-iters", str(size.reward_iters), "--save", str(work / "reward"), "--seed", "4"])
    runs = {}
    for name, kl_coef in (("ppo", 0.04), ("ppo_high_kl", HIGH_KL)):
        runs[name] = ppo_flags(work, size, kl_coef)
        run_job("PPO", [*runs[name], "--prompt-data-path", str(work / "prompts.jsonl"), "--save", str(work / name),
                        "--metrics-file", str(work / f"{name}.jsonl")])
    return runs


def has_marker(text: str) -> bool:
    """The rule: the marker as a word of the reply."""
    return re.search(rf"\b{MARKER}\b", text, re.IGNORECASE) is not None


def heldout_figures(work: Path, size: Size, flags: list[str], save: str | None) -> dict:
    """The policy that ``flags`` start (or, with ``save``, resume: the run's end) sampling replies to the held-out
    prompts: the marker's frequency and the mean KL to the reference (nats per reply)."""
    each, replies = str(size.heldout_samples), size.heldout_samples * len(HELDOUT_TOPICS)
    resume = ["--save", save, "--override-data-state"] if save else []  # the batch here is the held-out set
    cfg = parse_run_config(PPO, [*flags, *resume, "--prompt-data-path", str(work / "heldout.jsonl"),
                                 "--samples-per-prompt", each, "--global-batch-size", str(replies)])
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    prompts = read_prompts(cfg.ppo.prompt_data_path, tokenizer, cfg.train.seq_length, cfg.ppo.max_new_tokens)
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    try:
        models = build_ppo_models(cfg)
        load_frozen(cfg, models)
        if PPOCheckpointer(cfg, models.policy, models.value, RunningMean()).load() is None:
            start_weights(cfg, models)
        job = PPOJob(cfg, models, prompts, tokenizer, compute_device())
        sampling = Sampling(temperature=cfg.ppo.temperature, top_p=cfg.ppo.top_p, seed=12345)
        rollout, _ = job.rollout(0, sampling)
        kl = kl_to_reference(rollout.logprobs, rollout.ref_logprobs, rollout.mask).sum(dim=1)
        texts = [tokenizer.detokenize([t for t, m in zip(row[1:], mask) if m and t not in job.stop_ids])
                 for row, mask in zip(rollout.tokens.tolist(), rollout.mask.tolist())]
    finally:
        destroy_distributed()
    return {"marker_frequency": sum(map(has_marker, texts)) / len(texts), "kl": kl.mean().item(),
            "replies": len(texts), "examples": texts[:6]}


def plot(work: Path) -> Path:
    tool = load_tool("plot_metrics")
    argv = ["--metrics-file", str(work / "ppo.jsonl"), str(work / "ppo_high_kl.jsonl"), "--labels",
            "kl-coef 0.04", f"kl-coef {HIGH_KL:g}", "--output", str(work / "ppo_align.png")]
    announce("tools/plot_metrics.py", argv)
    if tool.main(argv) != 0:
        sys.exit("error: tools/plot_metrics.py failed")
    return work / "ppo_align.png"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/ppo_align", help="where data, checkpoints, metrics and figures go")
    p.add_argument("--quick", action="store_true", help="the reduced run of tests/test_ppo_align.py")
    args = p.parse_args(argv)
    size, work = QUICK if args.quick else FULL, Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    write_data(work)
    preprocess(work)
    runs = train_models(work, size)
    results = {"size": size.__dict__, "marker": MARKER,
               "sft": heldout_figures(work, size, runs["ppo"], None),
               **{name: heldout_figures(work, size, flags, str(work / name)) for name, flags in runs.items()}}
    results["figure"] = str(plot(work))
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for name in ("sft", "ppo", "ppo_high_kl"):
        r = results[name]
        print(f"{name:12s} marker in {r['marker_frequency']:.3f} of {r['replies']} held-out replies, "
              f"KL to the reference {r['kl']:.4f} nats per reply")
    return results


if __name__ == "__main__":
    main()
