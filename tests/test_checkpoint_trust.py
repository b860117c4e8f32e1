"""A checkpoint is data: reading one runs no code from it, and whatever is wrong with it is one line.

Every pickled file kind of a checkpoint (megatron-core's .metadata, common.pt and the objects in .distcp
shards; DeepSpeed's model and optimizer states and its universal checkpoint; a Hugging Face
pytorch_model.bin) is given an os.system payload, then read on every load path (conversion, export, training
--load, generation, evaluation, DeepSpeed resume): the command never runs and the refusal is one line naming
the file and the class. A truncated shard is one line on each path too; so are weight-index entries that
leave the model's directory, and config.json values of the wrong type or range.
"""

import dataclasses
import io
import json
import os
import pickle
import shutil

import pytest
import torch
from conftest import load_tool

from megatron_qwen.checkpointing.integrity import write_manifest
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.recipes import PRETRAIN

TINY = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "2", "--train-iters", "2", "--lr", "1e-3", "--eval-interval", "1000"]


class RunsCode:
    """Unpickled, it would run ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A --save directory of ours holding one checkpoint (model, optimizer, RNG object), written by the
    megatron engine's own checkpointer in this process."""
    from megatron_qwen.checkpointing.train_state import TrainState
    from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
    from megatron_qwen.training.megatron_engine import build_model_and_optimizer

    root = tmp_path_factory.mktemp("ours") / "ckpt"
    cfg = parse_run_config(PRETRAIN, [*TINY, "--save", str(root)])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    try:
        MegatronCheckpointer(cfg, *build_model_and_optimizer(cfg)).save(TrainState(iteration=1))
    finally:
        destroy_distributed()
    return root


def deepspeed_dir(root, cfg_dict: dict):
    """A DeepSpeed-engine --save directory in our layout: DeepSpeed's file names with plain contents."""
    ckpt = root / "iter_0000001"
    (ckpt / "universal" / "zero" / "output_layer.weight").mkdir(parents=True)
    torch.save({"module": {}, "ds_version": "0.19.8"}, ckpt / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"param": torch.zeros(2)}, ckpt / "universal" / "zero" / "output_layer.weight" / "fp32.pt")
    (ckpt / "deepspeed.json").write_text(json.dumps({"zero_stage": 1, "layout": {"tp": 1, "pp": 1, "dp": 1},
                                                     "universal_checkpoint_info": True, "run_config": cfg_dict}))
    write_manifest(str(ckpt))
    (root / "latest_checkpointed_iteration.txt").write_text("1")
    return ckpt


def replace_object(ckpt_dir, prefix: str, value) -> str:
    """Put ``value`` in place of the sharded object ``prefix*`` inside its .distcp shard (the offsets in
    .metadata moved to match, as a consistent forgery would); returns the shard's path."""
    meta_path = os.path.join(ckpt_dir, ".metadata")
    metadata = pickle.load(open(meta_path, "rb"))
    index, info = next((k, v) for k, v in metadata.storage_data.items() if k.fqn.startswith(prefix))
    blob = io.BytesIO()
    torch.save([value], blob)  # megatron-core stores a list of the objects
    path = os.path.join(ckpt_dir, info.relative_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:info.offset] + blob.getvalue() + data[info.offset + info.length:])
    shift = len(blob.getvalue()) - info.length
    for key, other in list(metadata.storage_data.items()):
        if other.relative_path == info.relative_path and other.offset > info.offset:
            metadata.storage_data[key] = dataclasses.replace(other, offset=other.offset + shift)
    metadata.storage_data[index] = dataclasses.replace(info, length=len(blob.getvalue()))
    pickle.dump(metadata, open(meta_path, "wb"))
    return path


def with_payload(kind: str, ours, tmp_path, marker):
    """(the --load directory, the file holding the payload) of a checkpoint whose ``kind`` file runs code."""
    root = tmp_path / kind
    if kind.startswith("deepspeed"):
        from megatron_qwen.checkpointing.resolver import resolve

        cfg_dict, _ = resolve(str(ours)).stored_config
        ckpt = deepspeed_dir(root, cfg_dict)
        victim = {"deepspeed model states": ckpt / "mp_rank_00_model_states.pt",
                  "deepspeed optimizer states": ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                  "deepspeed universal": ckpt / "universal" / "zero" / "output_layer.weight" / "fp32.pt"}[kind]
        torch.save({"module": {}, "x": RunsCode(marker)}, victim)
    else:
        shutil.copytree(ours, root)
        ckpt = root / "iter_0000001"
        if kind == ".metadata":
            victim = ckpt / ".metadata"
            pickle.dump(RunsCode(marker), open(victim, "wb"))
        elif kind == "common.pt":
            victim = ckpt / "common.pt"
            torch.save({**torch.load(victim, weights_only=False), "x": RunsCode(marker)}, victim)
        else:
            victim = replace_object(str(ckpt), "rng_state", RunsCode(marker))
    write_manifest(str(ckpt))  # its sizes and checksums made to match: only the content can give it away
    return root, str(victim)


def run_tool(name: str, argv: list, capsys) -> tuple[int, list[str]]:
    """tools/NAME.py's main (``name`` "train": the pretraining entry point) in this process: (exit status,
    stderr lines that are not Python warnings)."""
    try:
        if name == "train":
            from megatron_qwen.training.entry import main

            main(PRETRAIN, [str(a) for a in argv])
            code = 0
        else:
            code = load_tool(name).main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    return code, err


def load_paths(root, tmp_path, deepspeed: bool) -> dict[str, tuple[str, list]]:
    if deepspeed:
        return {"DeepSpeed resume": ("train", [*TINY, "--zero-engine", "deepspeed", "--load", root]),
                "convert": ("convert_checkpoint", ["--load-dir", root, "--save-dir", tmp_path / "converted"])}
    data = tmp_path / "evals" / "gsm8k"
    data.mkdir(parents=True, exist_ok=True)
    (data / "test.jsonl").write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
    (data / "gsm8k_prompt.txt").write_text("Question: 1 + 1?\nThe answer is 2\n")  # --protocol qwen's exemplars
    return {"train --load": ("train", [*TINY, "--load", root]),
            "export": ("convert_checkpoint", ["--load-dir", root, "--save-dir", tmp_path / "hf", "--hf-layout",
                                              "qwen2"]),
            "generate": ("generate", ["--load", root, "--prompt", "1 + 1 ="]),
            "evaluate": ("evaluate", ["--load", root, "--data-dir", tmp_path / "evals", "--tasks", "gsm8k"])}


KINDS = (".metadata", "common.pt", ".distcp object", "deepspeed model states", "deepspeed optimizer states",
         "deepspeed universal")


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickled_payload_runs_nowhere_and_is_one_line(kind, ours, tmp_path, capsys):
    marker = tmp_path / "ran"
    root, victim = with_payload(kind, ours, tmp_path, marker)
    for path, (tool, argv) in load_paths(root, tmp_path, kind.startswith("deepspeed")).items():
        code, err = run_tool(tool, argv, capsys)
        assert not marker.exists(), f"{kind}: {path} ran the payload"
        assert code == 2 and len(err) == 1, (kind, path, err)
        assert victim in err[0] and "posix.system" in err[0] and "nothing was run" in err[0], (kind, path, err[0])


def test_a_pytorch_model_bin_payload_runs_nowhere(tmp_path, capsys):
    from hf_fixtures import hf_model

    from megatron_qwen.config.model import model_preset

    model = hf_model(model_preset("tiny"))
    model.config.save_pretrained(tmp_path / "hf")
    marker = tmp_path / "ran"
    torch.save({"x": RunsCode(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    for tool, argv in (("convert_checkpoint", ["--load-dir", tmp_path / "hf", "--save-dir", tmp_path / "out"]),
                       ("train", [*TINY, "--load", tmp_path / "hf"])):
        code, err = run_tool(tool, argv, capsys)
        assert not marker.exists() and code == 2 and len(err) == 1, (tool, err)
        assert "pytorch_model.bin" in err[0] and "posix.system" in err[0], err[0]


def test_a_truncated_shard_is_one_line_on_every_path(ours, tmp_path, capsys):
    root = tmp_path / "truncated"
    shutil.copytree(ours, root)
    shard = max((root / "iter_0000001").glob("*.distcp"), key=os.path.getsize)
    os.truncate(shard, os.path.getsize(shard) // 2)
    for path, (tool, argv) in load_paths(root, tmp_path, deepspeed=False).items():
        code, err = run_tool(tool, argv, capsys)
        assert code == 2 and len(err) == 1 and str(shard) in err[0] and "bytes" in err[0], (path, err)


@pytest.mark.parametrize("entry", ["../../outside/evil.safetensors", "/etc/shadow", "sub/../../x.safetensors"])
def test_weight_index_entries_stay_inside_the_model(entry, tmp_path):
    from megatron_qwen.hf.files import HFWeights

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": entry}}))
    with pytest.raises(ConfigError) as e:
        HFWeights(str(tmp_path))
    assert "model.safetensors.index.json" in str(e.value) and entry in str(e.value)


def test_manifest_entries_stay_inside_the_checkpoint(ours, tmp_path, capsys):
    root = tmp_path / "manifest"
    shutil.copytree(ours, root)
    manifest = root / "iter_0000001" / "manifest.json"
    listed = json.loads(manifest.read_text())
    listed["files"]["../../../etc/passwd"] = {"bytes": os.path.getsize("/etc/passwd")}
    manifest.write_text(json.dumps(listed))
    code, err = run_tool("train", [*TINY, "--load", root], capsys)
    assert code == 2 and len(err) == 1 and "'../../../etc/passwd' climbs out" in err[0], err


QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
         "num_hidden_layers": 2, "intermediate_size": 176, "vocab_size": 1024, "max_position_embeddings": 512,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}


@pytest.mark.parametrize("key, value", [("hidden_size", [64]), ("hidden_size", "64"), ("num_hidden_layers", 4.0),
                                        ("vocab_size", None), ("max_position_embeddings", -5),
                                        ("rms_norm_eps", "1e-6"), ("rope_theta", 0), ("num_key_value_heads", True),
                                        ("architectures", "Qwen2ForCausalLM"), ("intermediate_size", 0)])
def test_config_json_values_are_checked_for_type_and_range(key, value, tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**QWEN2, key: value}))
    code, err = run_tool("convert_checkpoint", ["--load-dir", tmp_path / "hf", "--save-dir", tmp_path / "out"],
                         capsys)
    assert code == 2 and len(err) == 1 and "config.json" in err[0] and key in err[0], err
    assert not (tmp_path / "out").exists()
