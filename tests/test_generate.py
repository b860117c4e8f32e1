"""Generation with the KV cache (megatron_qwen/inference, tools/generate.py) against transformers' own
``generate`` on the same weights, and the cache against the model's full forward pass.

A tiny model with the real vocabulary and random (untrained) weights of a larger scale than the
initialization, so that greedy continuations are long runs of distinct tokens, is saved as a
checkpoint of ours; its weights also go into transformers' Qwen2ForCausalLM.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TRACKER, load_tool, quiet_env
from hf_fixtures import hf_model

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.hf.layouts import to_hf_state_dict
from megatron_qwen.inference.generate import Sampling, generation_defaults, penalize_repeats, sample_next
from megatron_qwen.tokenizer import load_tokenizer, render_chat
from megatron_qwen.training.arguments import parse_run_config

transformers = pytest.importorskip("transformers")

MODEL_FLAGS = ["--mock-data", "--model-size", "tiny-qwen-vocab", "--hidden-size", "64", "--ffn-hidden-size", "176",
               "--num-layers", "2"]
STOP_IDS = (151_643, 151_645)  # <|endoftext|>, <|im_end|>
NEW_TOKENS = 12
TOOL = [sys.executable, "tools/generate.py"]

# One process (megatron-core's parallel state must not leak into pytest's): builds the model, saves
# it, then loads it back as the tools do and runs the library checks. It prints one JSON object of
# findings, which the tests below judge.
WORKER = r"""
import dataclasses, json, sys, torch
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.inference import KVCacheDecoder, Sampling, generate, load_model_for_inference
from megatron_qwen.checkpointing.train_state import TrainState
from megatron_qwen.model.builder import build_model, unwrap
from megatron_qwen.platform.distributed import init_distributed
from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
from megatron_qwen.training.megatron_engine import build_model_and_optimizer

root, weights_file, flags = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = parse_run_config(PRETRAIN, [*flags, "--train-iters", "1", "--micro-batch-size", "1", "--global-batch-size",
                                  "1", "--save", root])
init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
ddp, optimizer, scheduler = build_model_and_optimizer(cfg)
model = unwrap(ddp[0])
# At the initialization's scale (std 0.02) the logits are nearly flat; unit-variance activations give
# an untrained model that still prefers different tokens in different contexts.
g = torch.Generator().manual_seed(5)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() == 2:
            p.normal_(0.0, 0.3 if p.shape[0] == cfg.model.padded_vocab_size else p.shape[1] ** -0.5, generator=g)
        else:  # norm weights around 1, QKV bias around 0
            p.add_(torch.randn(p.shape, generator=g), alpha=0.1)
torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, weights_file)
MegatronCheckpointer(cfg, ddp, optimizer, scheduler).save(TrainState(iteration=1))
del model, ddp, optimizer, scheduler

STOP = {151643, 151645}
model = load_model_for_inference(root)
vocab = model.vocab_size_unpadded
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (7, 2, 4, 7)]
out = {"vocab": vocab}
torch.set_grad_enabled(False)

def full_logits(m, ids):
    return m(torch.tensor([ids]), torch.arange(len(ids)).unsqueeze(0), None)[0].float()

def cache_vs_full(m):
    # A left-padded batch, its prompts then 5 given tokens each, against each prompt alone, uncached.
    given = torch.randint(0, vocab, (len(prompts), 5), generator=g)
    decoder = KVCacheDecoder(m, prompts, 6)
    steps = [decoder.prefill()] + [decoder.step(given[:, i]) for i in range(5)]
    err, scale = 0.0, 0.0
    for r, p in enumerate(prompts):
        ref = full_logits(m, p + given[r].tolist())[len(p) - 1:]
        err = max(err, (torch.stack([s[r] for s in steps]) - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return {"err": err, "scale": scale}

# PyTorch's sdpa attention (what load_model_for_inference builds on a GPU) on the same weights.
(sdpa,) = build_model(cfg.model, cfg.parallel, dataclasses.replace(cfg.build, transformer_impl="sdpa"),
                      initialize=False)
sdpa.load_state_dict(model.state_dict())
sdpa.eval()
out["cache"] = {"local": cache_vs_full(model), "sdpa": cache_vs_full(sdpa)}

greedy = generate(model, prompts, 12, STOP)
out["greedy"] = {"batch": greedy, "single": [generate(model, [p], 12, STOP)[0] for p in prompts],
                 "sdpa": generate(sdpa, prompts, 12, STOP, vocab_size=vocab)}
stop = greedy[0][2]
out["stop"] = {"id": stop, "got": generate(model, prompts, 12, {stop})}

sampling = dict(temperature=0.9, top_k=100, top_p=0.95)
out["sampled"] = {
    "seed7": generate(model, prompts, 12, STOP, Sampling(**sampling, seed=7)),
    "seed7_again": generate(model, prompts, 12, STOP, Sampling(**sampling, seed=7)),
    "seed8": generate(model, prompts, 12, STOP, Sampling(**sampling, seed=8)),
    "top_k1": generate(model, prompts, 12, STOP, Sampling(top_k=1, seed=3)),
    "top_p_tiny": generate(model, prompts, 12, STOP, Sampling(top_p=1e-6, seed=3)),
}

# Huge logits on the rows past the tokenizer's vocabulary (embedding padding).
w = model.output_layer.weight
w[vocab:] = torch.randn(w[vocab:].shape, generator=g) * 100
out["padded"] = {
    "full_argmax": [int(full_logits(model, p)[-1].argmax()) for p in prompts],
    "generated": generate(model, prompts, 12, STOP) + generate(model, prompts, 12, STOP, Sampling(seed=1)),
}

errors = {}
for name, call in {
    "empty": lambda: generate(model, [[1], []], 4, STOP),
    "id": lambda: generate(model, [[1, vocab]], 4, STOP),
    "negative": lambda: generate(model, [[-1]], 4, STOP),
    "too_long": lambda: generate(model, [[1] * model.max_sequence_length], 4, STOP),
    "no_tokens": lambda: generate(model, [[1]], 0, STOP),
    "temperature": lambda: Sampling(temperature=0),
    "top_p": lambda: Sampling(top_p=1.5),
    "top_k": lambda: Sampling(top_k=-1),
    "training": lambda: generate(model.train(), [[1]], 4, STOP),
}.items():
    try:
        call()
        errors[name] = None
    except ConfigError as e:
        errors[name] = str(e)
out["errors"] = errors
print("CHECKS " + json.dumps(out))
"""


def run_tool(args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); read as bytes, so a generated "\\r" is not turned into a newline."""
    proc = subprocess.run([*TOOL, *args], cwd=REPO, env=quiet_env(), capture_output=True, timeout=300)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.fixture(scope="module")
def tool():
    """tools/generate.py as a module, for the refusals that come before any model is loaded."""
    return load_tool("generate")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """(checkpoint root, full weights by global name, the library checks' findings)."""
    root = tmp_path_factory.mktemp("generate")
    proc = subprocess.run([sys.executable, "-c", WORKER, str(root / "ckpt"), str(root / "weights.pt"),
                           json.dumps(MODEL_FLAGS)], cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root / "ckpt", torch.load(root / "weights.pt"), json.loads(proc.stdout.split("CHECKS ", 1)[1])


@pytest.fixture(scope="module")
def checkpoint(worker):
    return worker[0]


@pytest.fixture(scope="module")
def checks(worker):
    return worker[2]


@pytest.fixture(scope="module")
def reference(worker):
    """transformers' Qwen2ForCausalLM on the checkpoint's weights."""
    cfg = parse_run_config(PRETRAIN, MODEL_FLAGS).model
    model = hf_model(cfg)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(worker[1], cfg, "qwen2"), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model


def reference_greedy(model, ids: list[int], repetition_penalty: float = 1.0) -> list[int]:
    """transformers' greedy continuation of one prompt (no padding), cut where ours stops."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0,
                             repetition_penalty=repetition_penalty)
    new = out[0, len(ids):].tolist()
    return next((new[:i] for i, t in enumerate(new) if t in STOP_IDS), new)


def assert_nontrivial(rows: list[list[int]]) -> None:
    """Long continuations of several distinct tokens: a comparison of them means something."""
    for row in rows:
        assert len(row) == NEW_TOKENS and len(set(row)) >= 6, row


def test_tool_greedy_batch_matches_transformers(checkpoint, reference):
    texts = ["The capital of France is", "def fibonacci(n):\n    return", "1 + 1 ="]  # 5, 8 and 5 tokens
    rc, out, err = run_tool(["--load", str(checkpoint), "--greedy", "--json", "--max-new-tokens", str(NEW_TOKENS),
                             *[a for t in texts for a in ("--prompt", t)]])
    assert rc == 0, err[-4000:]
    results = [json.loads(line) for line in out.split("\n")[:-1]]
    tokenizer = load_tokenizer()
    assert [r["prompt"] for r in results] == texts
    expected = [reference_greedy(reference, tokenizer.tokenize(t)) for t in texts]
    assert [r["ids"] for r in results] == expected
    assert [r["text"] for r in results] == [tokenizer.detokenize(ids) for ids in expected]
    assert_nontrivial(expected)


def test_tool_on_a_hugging_face_directory_matches_transformers(reference, tmp_path):
    """--load of a Hugging Face directory (transformers' own save_pretrained) runs directly."""
    reference.save_pretrained(tmp_path / "hf", safe_serialization=True)
    texts = ["The capital of France is", "1 + 1 ="]
    rc, out, err = run_tool(["--load", str(tmp_path / "hf"), "--greedy", "--json", "--max-new-tokens",
                             str(NEW_TOKENS), *[a for t in texts for a in ("--prompt", t)]])
    assert rc == 0, err[-4000:]
    tokenizer = load_tokenizer()
    expected = [reference_greedy(reference, tokenizer.tokenize(t)) for t in texts]
    assert [json.loads(line)["ids"] for line in out.split("\n")[:-1]] == expected
    assert_nontrivial(expected)


def test_tool_chat_matches_transformers_on_rendered_chatml(checkpoint, reference):
    """--chat, greedy by default, readable output: the prompt, then the text of transformers' ids."""
    texts = ["What is 7 * 8?", "Write a haiku about the sea, please."]
    rc, out, err = run_tool(["--load", str(checkpoint), "--chat", "--max-new-tokens", str(NEW_TOKENS),
                             *[a for t in texts for a in ("--prompt", t)]])
    assert rc == 0, err[-4000:]
    tokenizer = load_tokenizer()
    expected, printed = [], ""
    for i, text in enumerate(texts):  # the ChatML text, special tokens and all, encoded by tiktoken directly
        chat = render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        assert chat.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        expected.append(reference_greedy(reference, tokenizer.encoding.encode(chat, allowed_special="all")))
        printed += f"--- prompt {i + 1}: {text}\n{tokenizer.detokenize(expected[-1])}\n"
    assert out == printed
    assert_nontrivial(expected)


def test_tool_sampling_flags(tool):
    parse = tool.build_parser().parse_args
    base = ["--load", "x", "--prompt", "y"]
    assert tool.sampling_of(parse(base)) == (None, 1.0) and tool.sampling_of(parse([*base, "--greedy"])) == (None, 1.0)
    assert tool.sampling_of(parse([*base, "--temperature", "0.7", "--top-p", "0.8", "--top-k", "20", "--seed", "3"])) \
        == (Sampling(temperature=0.7, top_k=20, top_p=0.8, seed=3), 1.0)
    assert tool.sampling_of(parse([*base, "--seed", "3"])) == (Sampling(seed=3), 1.0)
    # The checkpoint's generation_config.json gives the defaults; each flag overrides its own value.
    chat = (Sampling(top_k=0, top_p=0.8), 1.1)
    assert tool.sampling_of(parse(base), chat) == chat
    assert tool.sampling_of(parse([*base, "--greedy"]), chat) == (None, 1.1)
    assert tool.sampling_of(parse([*base, "--temperature", "0.5", "--repetition-penalty", "1"]), chat) \
        == (Sampling(temperature=0.5, top_k=0, top_p=0.8), 1.0)
    tok = load_tokenizer()
    assert tool.stop_ids(tok, chat=False) == {151_643, 151_645}
    assert tool.stop_ids(tok, chat=True) == {151_643, 151_645, 151_644}  # a reply opening another turn has ended


def test_generation_defaults_read_as_transformers(tmp_path):
    """Qwen-7B-Chat's generation_config.json samples with top_p 0.8 over all tokens (top_k 0) and penalty 1.1;
    keys it leaves out take transformers' GenerationConfig defaults."""
    published = {"chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643, "max_window_size": 6144,
                 "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1}
    (tmp_path / "generation_config.json").write_text(json.dumps(published))
    assert generation_defaults(str(tmp_path)) == (Sampling(temperature=1.0, top_k=0, top_p=0.8), 1.1)
    unset = transformers.GenerationConfig._get_default_generation_params()  # what generate() applies to unset keys
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True}))
    assert generation_defaults(str(tmp_path)) == (Sampling(temperature=unset["temperature"], top_k=unset["top_k"],
                                                           top_p=unset["top_p"]), unset["repetition_penalty"])
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151643, "repetition_penalty": 1.2}))
    assert generation_defaults(str(tmp_path)) == (None, 1.2)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="generation_config.json: cannot read it"):
        generation_defaults(str(tmp_path))
    assert generation_defaults(str(tmp_path / "nowhere")) == (None, 1.0)


def test_repetition_penalty_is_transformers_processor():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1)) * 4
    rows = [[1, 2, 2, 40], [7], [0, 49, 13]]
    seen = torch.zeros(3, 50, dtype=torch.bool)
    for r, ids in enumerate(rows):
        seen[r, ids] = True
    processor = transformers.RepetitionPenaltyLogitsProcessor(1.7)
    for r, ids in enumerate(rows):
        expected = processor(torch.tensor([ids]), logits[r:r + 1].clone())
        assert torch.equal(penalize_repeats(logits, seen, 1.7)[r:r + 1], expected)


def test_tool_repetition_penalty_greedy_matches_transformers(checkpoint, reference):
    texts = ["The capital of France is", "1 + 1 ="]
    rc, out, err = run_tool(["--load", str(checkpoint), "--greedy", "--json", "--max-new-tokens", str(NEW_TOKENS),
                             "--repetition-penalty", "0.5", *[a for t in texts for a in ("--prompt", t)]])
    assert rc == 0, err[-4000:]
    tokenizer = load_tokenizer()
    expected = [reference_greedy(reference, tokenizer.tokenize(t), repetition_penalty=0.5) for t in texts]
    assert [json.loads(line)["ids"] for line in out.split("\n")[:-1]] == expected
    # Below 1 the penalty favours ids already seen, so it changes a greedy continuation of distinct tokens.
    assert expected != [reference_greedy(reference, tokenizer.tokenize(t)) for t in texts]


@pytest.mark.parametrize("args, message", [
    (["--load", "/nonexistent/ckpt", "--prompt", "x"], "--load /nonexistent/ckpt does not exist"),
    (["--load", str(REPO), "--prompt", "x"], f"no {TRACKER}"),
    (["--load", str(REPO), "--prompt", "x", "--greedy", "--temperature", "0.5"], "--greedy contradicts --temperature"),
    (["--load", str(REPO), "--prompt", "x", "--top-p", "0"], "top_p 0.0 must be in (0, 1]"),
    (["--load", str(REPO), "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),
])
def test_tool_refuses_bad_input_in_one_line(tool, capsys, args, message):
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_kv_cache_gives_the_logits_of_the_full_forward(checks):
    for backend, r in checks["cache"].items():
        assert r["err"] <= 1e-5 * r["scale"], (backend, r)


def test_batch_of_different_lengths_gives_each_prompts_own_result(checks):
    greedy = checks["greedy"]
    assert greedy["batch"] == greedy["single"] == greedy["sdpa"]
    assert_nontrivial(greedy["batch"])


def test_each_prompt_stops_at_its_own_stop_id(checks):
    stop, batch = checks["stop"]["id"], checks["greedy"]["batch"]
    expected = [row[:row.index(stop)] if stop in row else row for row in batch]
    assert checks["stop"]["got"] == expected
    assert len(expected[0]) < NEW_TOKENS and any(len(row) == NEW_TOKENS for row in expected)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(checks):
    s, greedy = checks["sampled"], checks["greedy"]["batch"]
    assert s["seed7"] == s["seed7_again"]
    assert s["seed7"] != s["seed8"] and s["seed7"] != greedy
    assert s["top_k1"] == greedy and s["top_p_tiny"] == greedy


def test_padded_vocabulary_rows_are_never_produced(checks):
    vocab, padded = checks["vocab"], checks["padded"]
    assert all(i >= vocab for i in padded["full_argmax"])  # the padding rows would win without the cut
    produced = [i for row in padded["generated"] for i in row]
    assert produced and max(produced) < vocab


def test_bad_input_is_refused_in_one_line(checks):
    for name, message in checks["errors"].items():
        assert message is not None and "\n" not in message, (name, message)


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)

    def drawn(sampling: Sampling) -> torch.Tensor:
        return torch.stack([sample_next(probs.log(), sampling, g) for _ in range(2000)]).flatten()

    top_p = drawn(Sampling(top_p=0.75))  # 0.5 + 0.3 reach 0.75: ids 0 and 1 only, renormalized 5:3
    assert set(top_p.tolist()) == {0, 1} and abs((top_p == 0).float().mean() - 0.625) < 0.04
    top_k = drawn(Sampling(top_k=3))
    assert set(top_k.tolist()) == {0, 1, 2} and abs((top_k == 2).float().mean() - 0.15 / 0.95) < 0.03
    hot = drawn(Sampling(temperature=2.0))  # p ** (1/2), renormalized
    assert abs((hot == 3).float().mean() - 0.05 ** 0.5 / probs.sqrt().sum()) < 0.03
