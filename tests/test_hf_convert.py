"""Qwen's Hugging Face checkpoints in and out (tools/convert_checkpoint.py, megatron_qwen/hf/).

The references share no code with the converter: transformers' own Qwen2ForCausalLM (a tiny random
model made here), and a Qwen-1-layout checkpoint this file builds from the same weights with a few lines
of mapping written for the tests (qwen1_state in tests/hf_fixtures.py; docs/qwen.md section 1). Tiny shapes
with the published vocabulary rows (151,936 and 152,064): hidden 64, 4 heads, 4 layers, FFN 176.
"""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, load_tool, torchrun
from hf_fixtures import (
    assert_bit_equal,
    convert,
    qwen1_config,
    qwen1_state,
    qwen2_model,
    read_safetensors_dir,
    write_qwen1,
)
from safetensors.torch import save_file

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN, PRETRAIN_CODE
from megatron_qwen.tokenizer.files import read_tokenizer_file
from megatron_qwen.training.arguments import parse_run_config

transformers = pytest.importorskip("transformers")

WORKER = os.path.join(REPO, "tests", "hf_convert_worker.py")
# TP x PP; "v1": interleaved, one layer per virtual pipeline stage (stage 0 holds layers 0 and 2).
LAYOUTS = ["1x1", "2x1", "2x2v1"]
@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Model A (151,936 rows) in both layouts: Qwen2 as sharded safetensors written by transformers,
    Qwen-1 as pytorch_model.bin. Model B (152,064 rows, as Qwen-14B/72B) in the Qwen-1 layout as
    one safetensors file. Then each converted to a checkpoint of ours by the tool."""
    root = tmp_path_factory.mktemp("hf")
    a, b = qwen2_model(151_936, seed=1), qwen2_model(152_064, seed=2)
    a.save_pretrained(root / "a_qwen2", max_shard_size="20MB")
    assert (root / "a_qwen2" / "model.safetensors.index.json").is_file()  # the sharded reader is exercised
    write_qwen1(root / "a_qwen", a, as_bin=True)
    write_qwen1(root / "b_qwen", b, as_bin=False)
    tokens = torch.randint(0, 151_851, (2, 16), generator=torch.Generator().manual_seed(5))
    torch.save(tokens, root / "tokens.pt")
    with torch.no_grad():
        ref_a, ref_b = a(input_ids=tokens).logits, b(input_ids=tokens).logits
    assert ref_a.std() > 1e-2 and ref_b.std() > 1e-2  # logits that differ across vocabulary and positions
    convert(*[["--load-dir", root / n, "--save-dir", root / f"ours_{n}"] for n in ("a_qwen2", "a_qwen", "b_qwen")])
    sources = [root / n for n in ("a_qwen2", "a_qwen", "b_qwen", "ours_a_qwen2", "ours_a_qwen", "ours_b_qwen")]
    return SimpleNamespace(root=root, a=a, b=b, tokens=tokens, sources=sources,
                           references=[ref_a, ref_a, ref_b, ref_a, ref_a, ref_b])


@pytest.fixture(scope="module")
def layouts(hf, tmp_path_factory):
    """The worker's output at TP1, TP2 and TP2 x PP2 interleaved (two 1-layer virtual stages per
    pipeline stage): one launch of 4 processes, data parallel over the rest (process start-up,
    megatron-core's import above all, costs more here than the work)."""
    out = tmp_path_factory.mktemp("layouts")
    torchrun(4, [WORKER, "--layouts", *LAYOUTS, "--tokens", str(hf.root / "tokens.pt"), "--out", str(out),
                 *map(str, hf.sources)])
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_imported_logits_equal_transformers(hf, layouts, layout):
    """Both layouts, both row counts, loaded directly from the Hugging Face directory and from the
    converted checkpoint: our fp32 logits are transformers' within 1e-4."""
    for i, (source, ref) in enumerate(zip(hf.sources, hf.references)):
        ours = torch.load(layouts / layout / f"logits_{i}.pt")
        assert ours.shape == ref.shape, (source, ours.shape, ref.shape)
        err = (ours - ref).abs().max().item()
        assert err <= 1e-4, f"{source.name} at {layout}: logits differ from transformers' by {err}"


def test_export_both_layouts_bit_for_bit(hf, layouts, tmp_path):
    a_qwen2, a_qwen, b_qwen = tmp_path / "a_qwen2", tmp_path / "a_qwen", tmp_path / "b_qwen"
    convert(
        # a checkpoint saved by a run at TP2 x PP2 x VP2 (loaded from the Qwen2 directory) -> Qwen2 layout
        ["--load-dir", layouts / "saved", "--save-dir", a_qwen2, "--hf-layout", "qwen2",
         "--max-shard-size", "30MB"],
        # the checkpoint converted from the Qwen-1 pytorch_model.bin -> Qwen-1 layout, as published
        ["--load-dir", hf.root / "ours_a_qwen", "--save-dir", a_qwen, "--hf-layout", "qwen"],
        # model B (152,064 rows) -> Qwen-1 layout in bf16
        ["--load-dir", hf.root / "ours_b_qwen", "--save-dir", b_qwen, "--hf-layout", "qwen", "--dtype", "bf16"],
        # the run that trained at --seq-length 16 -> Qwen-1 layout: its seq_length is 16
        ["--load-dir", layouts / "saved", "--save-dir", tmp_path / "saved_qwen", "--hf-layout", "qwen"],
    )
    assert not list(tmp_path.glob("*.partial-*"))

    index = json.load(open(a_qwen2 / "model.safetensors.index.json"))
    per_shard = {s: list(index["weight_map"].values()).count(s) for s in set(index["weight_map"].values())}
    assert len(per_shard) > 1  # a shard over the limit holds one tensor that alone exceeds it (the embedding)
    assert all(os.path.getsize(a_qwen2 / s) <= 30 * 10**6 or n == 1 for s, n in per_shard.items()), per_shard
    assert_bit_equal(read_safetensors_dir(a_qwen2), hf.a.state_dict())
    model = transformers.AutoModelForCausalLM.from_pretrained(a_qwen2, attn_implementation="eager")  # no remote code
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    with torch.no_grad():
        err = (model(input_ids=hf.tokens).logits - hf.references[0]).abs().max().item()
    assert err <= 1e-6, err
    gen = json.load(open(a_qwen2 / "generation_config.json"))
    assert gen["eos_token_id"] == [151643, 151645] and gen["pad_token_id"] == 151643

    assert_bit_equal(read_safetensors_dir(a_qwen), qwen1_state(hf.a))
    config = json.load(open(a_qwen / "config.json"))
    assert {k: config[k] for k in qwen1_config(hf.a)} == qwen1_config(hf.a)
    assert (a_qwen / "qwen.tiktoken").read_bytes() == read_tokenizer_file()[0]

    assert_bit_equal(read_safetensors_dir(b_qwen), {k: v.to(torch.bfloat16) for k, v in qwen1_state(hf.b).items()})
    config = json.load(open(b_qwen / "config.json"))
    assert config["vocab_size"] == 152_064 and config["torch_dtype"] == "bfloat16"
    assert not (config["bf16"] or config["fp16"] or config["fp32"])  # as published: the remote code picks

    config = json.load(open(tmp_path / "saved_qwen" / "config.json"))
    assert (config["seq_length"], config["max_position_embeddings"]) == (hf.tokens.shape[1], 128)


def test_pretrain_code_loads_hf_dir_at_tp2(hf, tmp_path):
    """`--load HF_DIR` in a real job at TP2: weights only, and its first loss is the loss
    transformers computes on the same batch of mock data."""
    args = ["--load", str(hf.root / "a_qwen2"), "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--train-iters", "1", "--lr", "1e-5", "--lr-warmup-iters", "0",
            "--eval-interval", "1000", "--seed", "3"]
    metrics = tmp_path / "m.jsonl"
    out = torchrun(2, ["-m", "megatron_qwen.pretrain_code", *args, "--tensor-model-parallel-size", "2",
                       "--metrics-file", str(metrics)])
    assert "loaded weights only from Hugging Face model" in out
    first = json.loads(open(metrics).readline())
    assert first["iteration"] == 1

    from megatron_qwen.training.batches import collate
    from megatron_qwen.training.datasets import build_datasets

    cfg = parse_run_config(PRETRAIN_CODE, args)
    train, _, _ = build_datasets(cfg)
    batch = collate([train[i] for i in range(cfg.train.global_batch_size)])
    with torch.no_grad():
        logits = hf.a(input_ids=batch["tokens"], position_ids=batch["position_ids"]).logits
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
    mask = batch["loss_mask"].float().flatten()
    ref = float((per_token * mask).sum() / mask.sum())
    assert abs(first["lm_loss"] - ref) <= 1e-4 * ref, (first["lm_loss"], ref)


def test_hf_load_fixes_the_model_shape(hf):
    cfg = parse_run_config(PRETRAIN, ["--load", str(hf.root / "b_qwen"), "--mock-data"])
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.num_attention_heads, m.ffn_hidden_size, m.padded_vocab_size,
            m.vocab_size, m.max_position_embeddings) == (64, 4, 4, 176, 152_064, 151_851, 128)
    assert parse_run_config(PRETRAIN, ["--load", str(hf.root / "ours_b_qwen"), "--mock-data"]).model == m
    assert parse_run_config(PRETRAIN, ["--load", str(hf.root / "b_qwen"), "--hidden-size", "64"]).model == m
    with pytest.raises(ConfigError, match="--hidden-size 128 contradicts --load"):
        parse_run_config(PRETRAIN, ["--load", str(hf.root / "b_qwen"), "--hidden-size", "128"])
    with pytest.raises(ConfigError, match="--model-size 7b has hidden_size 4096"):
        parse_run_config(PRETRAIN, ["--load", str(hf.root / "ours_b_qwen"), "--model-size", "7b"])


def _bad_dir(root, name, edit_state=None, edit_config=None):
    """A small Qwen2 directory (256 rows, 1 layer) with one thing wrong."""
    model = qwen2_model(256, seed=3, num_hidden_layers=1)
    directory = root / name
    model.save_pretrained(directory)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    (edit_state or (lambda s: None))(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})  # over transformers' file
    if edit_config:
        config = json.load(open(directory / "config.json"))
        edit_config(config)
        json.dump(config, open(directory / "config.json", "w"))
    return directory


QKEY = "model.layers.0.self_attn.q_proj.weight"
ERRORS = {
    "missing": (lambda s: s.pop("model.layers.0.self_attn.k_proj.bias"), None,
                ["'model.layers.0.self_attn.k_proj.bias' is missing", "[64]"]),
    "unexpected": (lambda s: s.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)}), None,
                   ["unexpected tensor 'model.layers.0.mlp.extra.weight'"]),
    "wrong shape": (lambda s: s.update({QKEY: torch.zeros(64, 32)}), None,
                    [f"'{QKEY}' has shape [64, 32]", "[64, 64]"]),
    "unknown architecture": (None, lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"),
                             ["LlamaForCausalLM", "unknown"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_hf_input_is_one_line(case, tmp_path, capsys):
    edit_state, edit_config, words = ERRORS[case]
    src = _bad_dir(tmp_path, "src", edit_state, edit_config)
    capsys.readouterr()  # transformers' own progress output while writing the directory
    assert load_tool("convert_checkpoint").main(["--load-dir", str(src), "--save-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()
    if case == "missing":  # a job's preflight refuses the same directory with the same line
        from megatron_qwen.training.preflight import check_run

        with pytest.raises(ConfigError, match="k_proj.bias' is missing"):
            check_run(parse_run_config(PRETRAIN, ["--load", str(src), "--mock-data", "--seq-length", "64"]), 1)


def test_random_bytes_as_safetensors_is_one_line(tmp_path, capsys):
    """1,000 random bytes named model.safetensors: its first 8 read as a header length of exabytes, which
    used to be allocated (a MemoryError traceback); now one line naming the file, before any allocation."""
    src = _bad_dir(tmp_path, "src")
    (src / "model.safetensors").write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8,
                                                          generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    capsys.readouterr()
    assert load_tool("convert_checkpoint").main(["--load-dir", str(src), "--save-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{src / 'model.safetensors'}: not a readable safetensors file" in err, err
    assert "exceeds the file's 1000 bytes" in err, err


def test_source_of_no_known_kind_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert load_tool("convert_checkpoint").main(["--load-dir", str(tmp_path / "empty"),
                                                 "--save-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a Hugging Face model directory" in err, err
    # A job refuses a Hugging Face --load of another architecture while resolving its flags.
    llama = _bad_dir(tmp_path, "llama", edit_config=lambda c: c.update(architectures=["LlamaForCausalLM"]))
    with pytest.raises(ConfigError, match="architecture.*LlamaForCausalLM.*is unknown"):
        parse_run_config(PRETRAIN, ["--load", str(llama), "--mock-data"])
