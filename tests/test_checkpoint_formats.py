"""Checkpoints of the distributed optimizer resume, at the same layout and at another, and checkpoints move
between this stack and Megatron-LM: ours carry every record Megatron-LM core_v0.16.1's load_checkpoint reads
(megatron/training/checkpointing.py), and a directory in Megatron-LM's layout, written here as that code
writes it (nothing of ours in it; its default dp_reshardable optimizer state), resumes here with its
iteration, LR schedule and optimizer state; so does one in the layout of our checkpoints before these
records. Reference: the uninterrupted run's losses."""

import argparse
import io
import json
import os
import pickle

import torch
from fault_harness import metrics, run_harness

COMMON = ["--model-size", "tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "2",
          "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "1", "--lr-decay-iters", "8",
          "--seed", "7", "--eval-interval", "1000", "--use-distributed-optimizer", "--train-iters", "4"]
SAVED_AT = 2
# What Megatron-LM core_v0.16.1's load_checkpoint reads of a checkpoint's args (and check_checkpoint_args
# compares), then the model fields its --use-checkpoint-args takes (load_args_from_checkpoint).
LOADER_ARGS = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "world_size", "data_parallel_size",
               "no_save_rng", "no_save_optim", "consumed_train_samples", "skipped_train_samples",
               "consumed_valid_samples", "num_layers", "hidden_size", "num_attention_heads", "add_position_embedding",
               "max_position_embeddings", "make_vocab_size_divisible_by", "padded_vocab_size", "tokenizer_type",
               "data_parallel_random_init", "global_batch_size")
MODEL_ARGS = ("ffn_hidden_size", "seq_length", "num_query_groups", "group_query_attention", "kv_channels",
              "position_embedding_type", "use_rotary_position_embeddings", "rotary_base", "rotary_percent",
              "rotary_interleaved", "add_bias_linear", "add_qkv_bias", "squared_relu", "swiglu",
              "untie_embeddings_and_output_weights", "apply_layernorm_1p", "normalization",
              "apply_query_key_layer_scaling", "attention_dropout", "hidden_dropout", "num_experts")


def megatron_lm_args(cfg, layout: dict, consumed: int) -> argparse.Namespace:
    """args as a Megatron-LM run of this model would hold them (a few of its ~600 fields, one of its enums)."""
    from megatron.core.transformer.enums import AttnBackend

    m, t = cfg.model, cfg.train
    return argparse.Namespace(
        tensor_model_parallel_size=layout["tp"], pipeline_model_parallel_size=layout["pp"],
        data_parallel_size=layout["dp"], world_size=layout["tp"] * layout["pp"] * layout["dp"],
        consumed_train_samples=consumed, num_layers=m.num_layers, hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size, num_attention_heads=m.num_attention_heads, kv_channels=16,
        max_position_embeddings=m.max_position_embeddings, padded_vocab_size=m.padded_vocab_size,
        vocab_size=m.vocab_size, seq_length=t.seq_length, global_batch_size=t.global_batch_size,
        micro_batch_size=t.micro_batch_size, rotary_base=10000, layernorm_epsilon=1e-6, normalization="RMSNorm",
        swiglu=True, add_bias_linear=False, add_qkv_bias=True, untie_embeddings_and_output_weights=True,
        position_embedding_type="rope", rotary_percent=1.0, mock_data=True, data_path=None,
        attention_backend=AttnBackend.auto, params_dtype=torch.float32, use_distributed_optimizer=True)


def megatron_lm_state(cfg, model, optimizer, scheduler, state) -> tuple[dict, dict]:
    """(state dict, content metadata) as Megatron-LM's save_checkpoint makes them (generate_state_dict,
    get_rng_state; torch_dist format, no --dist-ckpt-optim-fully-reshardable)."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron_qwen.model.builder import unwrap

    meta = {"distrib_optim_sharding_type": "dp_reshardable", "singleton_local_shards": False,
            "chained_optim_avoid_prefix": True}
    rng = [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
            "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.get_rng_state(),
            "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states()}]
    saved = {"args": megatron_lm_args(cfg, {"tp": 1, "pp": 1, "dp": 1}, state.consumed_samples),
             "checkpoint_version": 3.0, "iteration": state.iteration,
             "model": unwrap(model[0]).sharded_state_dict(metadata=dict(meta)),
             "opt_param_scheduler": scheduler.state_dict(), "num_floating_point_operations_so_far": 0,
             "rng_state": ShardedObject("rng_state", rng, (1, 1), (0, 0), replica_id=0)}
    saved["optimizer"] = optimizer.sharded_state_dict(saved["model"], metadata=dict(meta))
    return saved, meta


def older_state(cfg, model, optimizer, scheduler, state) -> tuple[dict, None]:
    """The state dict a checkpoint of ours held before Megatron-LM's records (this project at b1b6f60): the LR
    schedule as ``scheduler``, the RNG states as one object per (pp, tp, dp) rank of the saved DP2 layout."""
    import dataclasses

    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron_qwen.checkpointing.data_state import data_state
    from megatron_qwen.checkpointing.rng_state import rng_states
    from megatron_qwen.checkpointing.weights import model_state, sharded_metadata

    saved = model_state(model)
    saved["optimizer"] = optimizer.sharded_state_dict(saved, metadata=sharded_metadata())
    saved.update({f"rng_state_{dp}": ShardedObject("rng_state", rng_states(), (1, 1, 2), (0, 0, dp), replica_id=0)
                  for dp in range(2)})
    saved.update(scheduler=scheduler.state_dict(), train_state=dataclasses.asdict(state), data_state=data_state(cfg),
                 layout={"tp": 1, "pp": 1, "dp": 2}, run_config=cfg.to_dict())
    return saved, None


def rewrite(source: str, target: str, argv: list[str], kind: str) -> None:
    """The run saved under ``source``, loaded into a model and optimizer of one process and saved again
    through megatron-core alone, as Megatron-LM writes it (``kind`` megatron_lm) or as this project did
    before (older: no checksums, a manifest of sizes)."""
    from megatron.core import dist_checkpointing

    from megatron_qwen.config.recipes import PRETRAIN
    from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
    from megatron_qwen.training.arguments import parse_run_config
    from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
    from megatron_qwen.training.megatron_engine import build_model_and_optimizer

    cfg = parse_run_config(PRETRAIN, [*argv, "--load", source])
    init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
    try:
        model, optimizer, scheduler = build_model_and_optimizer(cfg)
        state = MegatronCheckpointer(cfg, model, optimizer, scheduler).load()
        build = megatron_lm_state if kind == "megatron_lm" else older_state
        saved, meta = build(cfg, model, optimizer, scheduler, state)
        ckpt_dir = os.path.join(target, f"iter_{state.iteration:07d}")
        os.makedirs(ckpt_dir)
        dist_checkpointing.save(saved, ckpt_dir, content_metadata=meta)
        if kind == "older":
            sizes = {name: os.path.getsize(os.path.join(ckpt_dir, name)) for name in os.listdir(ckpt_dir)}
            with open(os.path.join(ckpt_dir, "manifest.json"), "w") as f:
                json.dump(sizes, f)
        with open(os.path.join(target, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(state.iteration))
    finally:
        destroy_distributed()


def test_distributed_optimizer_resumes_and_megatron_lm_checkpoints_move_both_ways(tmp_path):
    ckpt, mlm, older = str(tmp_path / "ckpt"), str(tmp_path / "megatron_lm"), str(tmp_path / "older")
    # The uninterrupted run saves at SAVED_AT (and at its end, which is then dropped): the resumes start there.
    jobs = [{"name": "reference", "nproc": 2, "argv": [*COMMON, "--save", ckpt, "--save-interval", str(SAVED_AT),
                                                       "--metrics-file", str(tmp_path / "reference.jsonl")]},
            {"name": "back", "call": "test_checkpoint_formats:keep_only", "args": [ckpt, SAVED_AT]}]
    jobs += [{"name": name, "nproc": 2, "argv": [*COMMON, *flags, "--metrics-file", str(tmp_path / f"{name}.jsonl")]}
             for name, flags in [("same_layout", ["--load", ckpt]),
                                 ("other_layout", ["--load", ckpt, "--tensor-model-parallel-size", "2"])]]
    for kind, target in (("megatron_lm", mlm), ("older", older)):
        jobs += [{"name": f"write {kind}", "call": "test_checkpoint_formats:rewrite", "args": [ckpt, target, COMMON,
                                                                                              kind]},
                 {"name": f"from_{kind}", "nproc": 2,
                  "argv": [*COMMON, "--load", target, "--metrics-file", str(tmp_path / f"from_{kind}.jsonl")]}]
    results = run_harness(jobs, tmp_path)
    ref = {it: row["lm_loss"] for it, row in metrics(tmp_path / "reference.jsonl").items()}
    assert sorted(ref) == [1, 2, 3, 4]
    for name, rel in (("same_layout", 1e-6), ("other_layout", 1e-5), ("from_megatron_lm", 1e-6), ("from_older", 1e-6)):
        run = results[name][0]
        assert run["codes"] == [0, 0], run["output"][-3000:]
        assert f"continuing at iteration {SAVED_AT}" in run["output"]
        got = metrics(tmp_path / f"{name}.jsonl")
        assert sorted(got) == [3, 4], name
        for it in (3, 4):  # the optimizer's moments and step, and the LR schedule, carried over
            assert abs(got[it]["lm_loss"] - ref[it]) <= rel * ref[it], (name, it, got[it]["lm_loss"], ref[it])
            assert got[it]["consumed_samples"] == 4 * it
    assert "model and optimizer" in results["from_megatron_lm"][0]["output"]
    check_megatron_lm_records(os.path.join(ckpt, f"iter_{SAVED_AT:07d}"))


def keep_only(root: str, iteration: int) -> None:
    """Make ``iteration`` the latest checkpoint under ``root``, as if the run had stopped after saving it."""
    import shutil

    from megatron_qwen.checkpointing.directory import complete_iterations, iteration_dir, write_tracker

    for later in [it for it in complete_iterations(root) if it > iteration]:
        shutil.rmtree(iteration_dir(root, later))
    write_tracker(root, iteration)


def check_megatron_lm_records(ckpt_dir: str) -> None:
    """What Megatron-LM's load_checkpoint reads of a checkpoint of ours is there, with the run's values."""
    common = torch.load(os.path.join(ckpt_dir, "common.pt"), weights_only=False)
    args = common["args"]
    assert isinstance(args, argparse.Namespace)
    missing = [name for name in (*LOADER_ARGS, *MODEL_ARGS) if not hasattr(args, name)]
    assert not missing, missing
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size,
            args.world_size) == (1, 1, 2, 2)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.padded_vocab_size) == (4, 64, 4, 1024)
    assert args.consumed_train_samples == 4 * SAVED_AT and not args.no_save_optim and not args.no_save_rng
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == SAVED_AT
    assert set(common["opt_param_scheduler"]) >= {"max_lr", "lr_warmup_steps", "num_steps", "lr_decay_style"}
    assert common["opt_param_scheduler"]["num_steps"] == 4 * SAVED_AT
    assert common["content_metadata"]["distrib_optim_sharding_type"] == "fully_reshardable"
    # Megatron-LM pads the vocabulary to a multiple of divisor x TP: its divisor gives the same rows.
    step = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    assert -(-args.vocab_size // step) * step == args.padded_vocab_size
    # The RNG object: (pp, tp) shards, the data-parallel rank as replica id (one stored), a list of one dict per
    # data-parallel rank in rank order (Megatron-LM's list under --data-parallel-random-init; it reads the first
    # otherwise), so that each rank's states come back to it.
    metadata = pickle.load(open(os.path.join(ckpt_dir, ".metadata"), "rb"))
    rng_keys = [key for key in metadata.state_dict_metadata if key.startswith("rng_state")]
    assert rng_keys == ["rng_state/shard_0.0_1.1"], rng_keys
    (info,) = [v for k, v in metadata.storage_data.items() if k.fqn == rng_keys[0]]
    with open(os.path.join(ckpt_dir, info.relative_path), "rb") as f:
        f.seek(info.offset)
        (rng,) = torch.load(io.BytesIO(f.read(info.length)), weights_only=False)  # megatron-core's list of objects
    assert isinstance(rng, list) and len(rng) == args.data_parallel_size == 2
    for entry in rng:
        assert set(entry) == {"random_rng_state", "np_rng_state", "torch_rng_state", "cuda_rng_state",
                              "rng_tracker_states"}
