"""Hugging Face layouts converted directly (megatron_qwen/hf/relayout.py, tools/convert_checkpoint.py with a
Hugging Face --load-dir and --hf-layout): the same directory, file for file and byte for byte, as the way
through a checkpoint of ours (import, then export), in one process that never imports megatron-core; and
transformers' own Qwen2ForCausalLM (the reference model made here) reads the result with its logits.

Tiny shapes (hidden 64, 4 heads, 2 layers, FFN 176, 512 vocabulary rows) keep the import's megatron model
small; the tokenizer files are written in full as for any export."""

import filecmp
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from conftest import REPO, quiet_env
from hf_fixtures import (
    CONVERT_TOOL,
    assert_bit_equal,
    convert,
    qwen1_state,
    qwen2_model,
    read_safetensors_dir,
    write_qwen1,
)

from megatron_qwen.config.errors import ConfigError

transformers = pytest.importorskip("transformers")

ROWS = 512


def convert_directly(*runs: list) -> None:
    """tools/convert_checkpoint.py's main() once per argument list in one process, which must end without
    megatron-core or a process group: the direct conversion needs neither."""
    script = ("import json, runpy, sys\nmain = runpy.run_path(sys.argv[1])['main']\n"
              "for argv in json.loads(sys.argv[2]):\n    if main(argv):\n        sys.exit(f'failed: {argv}')\n"
              "import torch.distributed as dist\n"
              "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'megatron')\n"
              "assert not loaded and not dist.is_initialized(), loaded\n")
    proc = subprocess.run([sys.executable, "-c", script, CONVERT_TOOL, json.dumps([list(map(str, r)) for r in runs])],
                          cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def assert_same_directory(a, b) -> None:
    """The same files with the same bytes (weights, config.json, generation_config.json, tokenizer files)."""
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One random model in both layouts (Qwen-1 as one safetensors file, Qwen2 as transformers' sharded
    safetensors), each converted both ways: directly, and through a checkpoint of ours."""
    root = tmp_path_factory.mktemp("relayout")
    model = qwen2_model(ROWS, seed=5, num_hidden_layers=2)
    write_qwen1(root / "qwen", model, as_bin=False)
    model.save_pretrained(root / "qwen2", max_shard_size="200KB")
    assert (root / "qwen2" / "model.safetensors.index.json").is_file()  # the sharded reader is exercised
    convert(["--load-dir", root / "qwen", "--save-dir", root / "ours_qwen"],
            ["--load-dir", root / "ours_qwen", "--save-dir", root / "via_ours_qwen2", "--hf-layout", "qwen2"],
            ["--load-dir", root / "qwen2", "--save-dir", root / "ours_qwen2"],
            ["--load-dir", root / "ours_qwen2", "--save-dir", root / "via_ours_qwen", "--hf-layout", "qwen"])
    convert_directly(["--load-dir", root / "qwen", "--save-dir", root / "direct_qwen2", "--hf-layout", "qwen2"],
                     ["--load-dir", root / "qwen2", "--save-dir", root / "direct_qwen", "--hf-layout", "qwen"],
                     ["--load-dir", root / "direct_qwen2", "--save-dir", root / "back_qwen", "--hf-layout", "qwen"])
    assert not list(root.glob("*.partial-*"))
    return root, model


def test_qwen_to_qwen2_equals_import_then_export(models):
    root, model = models
    assert_same_directory(root / "direct_qwen2", root / "via_ours_qwen2")
    assert_bit_equal(read_safetensors_dir(root / "direct_qwen2"), model.state_dict())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(root / "direct_qwen2", attn_implementation="eager")
    tokens = torch.randint(0, ROWS, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=tokens).logits, model(input_ids=tokens).logits)


def test_qwen2_to_qwen_equals_import_then_export(models):
    root, model = models
    assert_same_directory(root / "direct_qwen", root / "via_ours_qwen")
    assert_bit_equal(read_safetensors_dir(root / "direct_qwen"), qwen1_state(model))
    # And back: qwen -> qwen2 -> qwen gives the Qwen-1 tensors it started from.
    assert_bit_equal(read_safetensors_dir(root / "back_qwen"), read_safetensors_dir(root / "qwen"))


def test_relayout_keeps_qwen1_lengths_and_casts(models, tmp_path):
    """qwen -> qwen (a rewrite in bf16) keeps the training length and the position limit apart."""
    root, model = models
    from megatron_qwen.hf.relayout import relayout_hf

    relayout_hf(str(root / "qwen"), str(tmp_path / "bf16"), "qwen", dtype="bf16")
    assert_bit_equal(read_safetensors_dir(tmp_path / "bf16"),
                     {k: v.to(torch.bfloat16) for k, v in qwen1_state(model).items()})
    config, source = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "bf16", root / "qwen"))
    assert config["torch_dtype"] == "bfloat16"
    assert (config["seq_length"], config["max_position_embeddings"]) == (source["seq_length"],
                                                                         source["max_position_embeddings"]) == (64, 128)


def test_evaluation_reads_a_qwen1_directory_converted_directly(models, tmp_path):
    """tools/evaluate.py's model directory for a Qwen-1 --load: the direct conversion's, with the stop ids as
    its only generation settings (lm-eval sets its own; a max_new_tokens there would override them)."""
    root, _ = models
    from megatron_qwen.evaluation.runner import hf_model_dir

    converted = hf_model_dir(str(root / "qwen"), str(tmp_path))
    names = sorted(os.listdir(converted))
    assert names == sorted(os.listdir(root / "direct_qwen2"))
    others = [n for n in names if n != "generation_config.json"]
    assert filecmp.cmpfiles(converted, root / "direct_qwen2", others, shallow=False)[0] == others
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"eos_token_id": [151_643, 151_645], "pad_token_id": 151_643, "bos_token_id": None}


def test_relayout_writes_as_exports_do_and_checks_what_it_reads(models, tmp_path):
    """The direct conversion stages its output as the export does (checkpointing/saving.py): a killed one's
    DST.partial-* is removed, and the result has the umask's mode, not a temporary directory's 0700. What it
    reads is checked as on import: a weight-index entry outside the model, or a config.json value of the wrong
    type, is one line naming it, and nothing is written."""
    root, _ = models
    from megatron_qwen.hf.relayout import relayout_hf

    killed = tmp_path / "out.partial-killed"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    umask = os.umask(0o027)
    try:
        relayout_hf(str(root / "qwen"), str(tmp_path / "out"), "qwen2")
    finally:
        os.umask(umask)
    assert not killed.exists() and stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o750

    outside = tmp_path / "outside"
    shutil.copytree(root / "qwen2", outside)
    index = json.loads((outside / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../qwen2/model-00001-of-00002.safetensors"
    (outside / "model.safetensors.index.json").write_text(json.dumps(index))
    wrong_type = tmp_path / "wrong_type"
    shutil.copytree(root / "qwen2", wrong_type)
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "2"}))
    for source, named in ((outside, "../qwen2/model-00001-of-00002.safetensors"), (wrong_type, "num_hidden_layers")):
        with pytest.raises(ConfigError) as e:
            relayout_hf(str(source), str(tmp_path / f"{source.name}_out"), "qwen")
        assert named in str(e.value) and "\n" not in str(e.value)
        assert not list(tmp_path.glob(f"{source.name}_out*"))
