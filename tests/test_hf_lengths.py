"""Qwen-1's two lengths kept apart: `seq_length` (trained length: where dynamic NTK and LogN begin) and
`max_position_embeddings` (the position limit), on import, generation, long-context evaluation, training
from a Hugging Face directory and export.

The reference is transformers' own Qwen2ForCausalLM on the same weights, with Qwen's dynamic-NTK rule worked
out here: past `seq_length` T, a sequence of L tokens runs RoPE at base * alpha**(d / (d - 2)) with
alpha = 2**ceil(log2(L / T) + 1) - 1, alpha fixed by the prompt while decoding (modeling_qwen.py).
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, quiet_env, run_module
from hf_fixtures import convert, qwen1_state

transformers = pytest.importorskip("transformers")

TRAINED, POSITIONS = 32, 512  # the directory: seq_length 32, max_position_embeddings 512
LENGTHS = (32, 64, 128)
PROMPT, NEW = 40, 24  # a prompt past seq_length (alpha 3 from its length), continued past it


def qwen2_reference(rows=1024, layers=2, heads=4, hidden=64, theta=10000.0, seed=3):
    config = transformers.Qwen2Config(vocab_size=rows, hidden_size=hidden, intermediate_size=176,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                      max_position_embeddings=8192, rope_theta=theta, rms_norm_eps=1e-6,
                                      tie_word_embeddings=False)
    config._attn_implementation = "eager"
    model = transformers.Qwen2ForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # unit-variance activations: attention, and so the logits, depend on RoPE
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 if p.shape[0] == rows else p.shape[1] ** -0.5, generator=g)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + float("norm" in name))
    return model


def write_qwen1_dir(directory, model, seq_length: int, positions: int) -> None:
    """A Qwen-1 (QWenLMHeadModel) directory of ``model``'s weights with the two lengths given."""
    from safetensors.torch import save_file

    c = model.config
    directory.mkdir()
    config = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": c.hidden_size,
              "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
              "kv_channels": c.hidden_size // c.num_attention_heads, "intermediate_size": 2 * c.intermediate_size,
              "vocab_size": c.vocab_size, "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000, "rotary_pct": 1.0,
              "no_bias": True, "tie_word_embeddings": False, "use_dynamic_ntk": True, "use_logn_attn": True,
              "seq_length": seq_length, "max_position_embeddings": positions}
    (directory / "config.json").write_text(json.dumps(config))
    save_file(qwen1_state(model), str(directory / "model.safetensors"), metadata={"format": "pt"})


def ntk_theta(length: int, trained: int, head_dim: int) -> float:
    alpha = max(2 ** math.ceil(math.log2(length / trained) + 1) - 1, 1)  # Qwen's rule, written out again
    return 10000.0 * alpha ** (head_dim / (head_dim - 2))


# One process (megatron-core's parallel state stays out of pytest's): the library path of tools/generate.py
# and tools/eval_long_context.py (evaluation/long_context.py) on the directory; prints one JSON object.
WORKER = r"""
import json, sys, types, torch
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.evaluation.long_context import long_context_table
from megatron_qwen.inference import generate, load_model_for_inference
from megatron_qwen.model.long_context import LongContextSettings, set_long_context

directory, data, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
new, lengths = int(sys.argv[4]), json.loads(sys.argv[5])
model = load_model_for_inference(directory)
out = {"train_length": model.train_length, "limit": model.max_sequence_length}
set_long_context(model, LongContextSettings(model.train_length, dynamic_ntk=True))
out["ntk_ids"] = generate(model, [prompt], new, stop_ids=(), vocab_size=1024)[0]
set_long_context(model, None)
try:
    generate(model, [prompt], model.max_sequence_length, stop_ids=(), vocab_size=1024)
except ConfigError as e:
    out["refused"] = str(e)
out["table"] = long_context_table(directory, data, lengths, eval_tokens=2 * max(lengths), chunk=48)["perplexity"]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def qwen1(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    reference = qwen2_reference()
    write_qwen1_dir(root / "qwen1", reference, TRAINED, POSITIONS)
    stream = torch.randint(0, 1024, (2 * max(LENGTHS) + 8,), generator=torch.Generator().manual_seed(1))
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(root / "held.bin"), dtype=np.int32)
    builder.add_document(stream.numpy().astype(np.int32), [stream.numel()])
    builder.finalize(str(root / "held.idx"))
    prompt = stream[:PROMPT].tolist()
    proc = subprocess.run([sys.executable, "-c", WORKER, str(root / "qwen1"), str(root / "held"), json.dumps(prompt),
                           str(NEW), json.dumps(LENGTHS)], cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    return reference, stream, prompt, result, root


def test_import_reads_both_lengths(qwen1):
    *_, result, _ = qwen1
    assert (result["train_length"], result["limit"]) == (TRAINED, POSITIONS)
    assert "exceeds the model's 512 positions" in result["refused"] and "--max-position-embeddings" in result["refused"]


def test_generation_past_seq_length_is_qwens_dynamic_ntk(qwen1):
    """Greedy decoding of a 40-token prompt (past seq_length 32) with dynamic NTK: transformers' greedy ids at
    the base of the prompt's alpha (3), kept while decoding."""
    reference, _, prompt, result, _ = qwen1
    ntk = qwen2_reference(theta=ntk_theta(PROMPT, TRAINED, 16))
    with torch.no_grad():
        out = ntk.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, PROMPT, dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
    expected = out[0, PROMPT:].tolist()
    assert result["ntk_ids"] == expected and len(set(expected)) >= 8
    with torch.no_grad():  # the plain model continues otherwise: the comparison sees the NTK base
        plain = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, PROMPT, dtype=torch.long),
                                   do_sample=False, max_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
    assert plain[0, PROMPT:].tolist() != expected


def reference_perplexity(model, stream, length: int) -> float:
    eval_tokens = 2 * max(LENGTHS)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, eval_tokens - length + 1, length):
            ids = stream[start:start + length][None]
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += length - 1
    return math.exp(total / count)


def test_long_context_evaluation_past_seq_length_is_qwens(qwen1):
    """tools/eval_long_context.py on the directory: the plain row is transformers' model, the dynamic-NTK row
    transformers' model at the rescaled base of each length (alpha 1, 3, 7 for 32, 64, 128 over T = 32)."""
    reference, stream, _, result, _ = qwen1
    table = {row: {int(n): v for n, v in cells.items()} for row, cells in result["table"].items()}
    for n in LENGTHS:
        assert table["none"][n] == pytest.approx(reference_perplexity(reference, stream, n), rel=1e-5)
        ntk = qwen2_reference(theta=ntk_theta(n, TRAINED, 16))
        assert table["+ dynamic NTK"][n] == pytest.approx(reference_perplexity(ntk, stream, n), rel=1e-5)
    assert table["+ dynamic NTK + LogN"][TRAINED] == table["+ dynamic NTK"][TRAINED]  # LogN begins past T
    assert table["+ dynamic NTK + LogN"][128] != table["+ dynamic NTK"][128]


def test_code_qwen_trains_past_seq_length_and_exports_its_own(tmp_path, capsys):
    """`pretrain_code --load` of a directory trained at 2048 (with 32768 positions) at --seq-length 8192
    runs an iteration; its export says seq_length 8192, the length it trained at. A limit below --seq-length is
    refused in one line, and --max-position-embeddings lifts it with a warning."""
    write_qwen1_dir(tmp_path / "base", qwen2_reference(layers=1, heads=1), 2048, 32768)
    base = ["--load", str(tmp_path / "base"), "--mock-data", "--micro-batch-size", "1", "--global-batch-size", "1",
            "--train-iters", "1", "--lr-warmup-iters", "0", "--eval-interval", "1000", "--transformer-impl", "local"]
    proc = run_module("megatron_qwen.pretrain_code", [*base, "--seq-length", "8192", "--save", str(tmp_path / "run")],
                      timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    convert(["--load-dir", tmp_path / "run", "--save-dir", tmp_path / "export", "--hf-layout", "qwen"])
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert (config["seq_length"], config["max_position_embeddings"]) == (8192, 32768)

    from megatron_qwen.config.errors import ConfigError
    from megatron_qwen.config.recipes import PRETRAIN_CODE
    from megatron_qwen.training.arguments import parse_run_config

    with pytest.raises(ConfigError, match="--seq-length 65536 exceeds --max-position-embeddings 32768"):
        parse_run_config(PRETRAIN_CODE, [*base, "--seq-length", "65536"]).validate(1)
    lifted = parse_run_config(PRETRAIN_CODE, [*base, "--seq-length", "65536", "--max-position-embeddings", "65536"])
    lifted.validate(1)
    assert (lifted.model.max_position_embeddings, lifted.model.seq_length) == (65536, 2048)
    assert "warning: --max-position-embeddings 65536 lifts the position limit" in capsys.readouterr().err
