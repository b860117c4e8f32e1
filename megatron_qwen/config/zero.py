"""ZeRO data parallelism: which engine shards what (Megatron-DeepSpeed's flag names, docs/zero.md).

The megatron engine is megatron-core's DDP with its distributed optimizer: stage 0 (plain DDP)
or 1 (optimizer state sharded), at any TP/PP. The deepspeed engine hands the same model to
DeepSpeed for stages 1-3 (2: gradients sharded too; 3: parameters too), with optional CPU
offload, at TP x DP with PP=1.
"""

import json
from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.parallel import ParallelConfig

ENGINES = ("megatron", "deepspeed")
OFFLOAD_DEVICES = ("none", "cpu")
# megatron-core DDP's default bucket (40M elements); DeepSpeed's own default (5e8) makes CPU steps slow.
DEFAULT_BUCKET_ELEMENTS = 40_000_000


@dataclass(frozen=True)
class ZeroSettings:
    engine: str = "megatron"
    stage: int = 0
    offload_optimizer: str = "none"
    offload_param: str = "none"
    bucket_size: int = DEFAULT_BUCKET_ELEMENTS
    deepspeed_config: str | None = None  # a user's DeepSpeed JSON, under our flags

    @property
    def deepspeed(self) -> bool:
        return self.engine == "deepspeed"

    @property
    def distributed_optimizer(self) -> bool:
        """megatron-core's distributed optimizer: ZeRO-1 on the megatron engine."""
        return not self.deepspeed and self.stage == 1

    def validate(self, parallel: ParallelConfig, async_save: bool) -> None:
        if not self.deepspeed:
            for flag, value in (("--zero-offload-optimizer", self.offload_optimizer),
                                ("--zero-offload-param", self.offload_param)):
                if value != "none":
                    raise ConfigError(f"{flag} {value} needs --zero-engine deepspeed (megatron-core keeps "
                                      "optimizer state and parameters on the accelerator)")
            if self.deepspeed_config:
                raise ConfigError(f"--deepspeed-config {self.deepspeed_config} needs --zero-engine deepspeed")
            if self.stage > 1:
                raise ConfigError(f"--zero-stage {self.stage} needs --zero-engine deepspeed (megatron-core's "
                                  "distributed optimizer is ZeRO-1)")
            return
        if self.stage == 0:
            raise ConfigError("--zero-engine deepspeed runs --zero-stage 1, 2 or 3; stage 0 is the megatron "
                              "engine without --use-distributed-optimizer")
        if parallel.pipeline_model_parallel_size > 1:
            why = ("DeepSpeed refuses ZeRO-2/3 with pipeline parallelism" if self.stage > 1
                   else "the deepspeed engine runs TP x DP only")
            raise ConfigError(f"--zero-engine deepspeed --zero-stage {self.stage} with --pipeline-model-parallel-"
                              f"size {parallel.pipeline_model_parallel_size}: {why}; use PP=1 or --zero-engine "
                              "megatron --zero-stage 1")
        if parallel.context_parallel_size > 1:
            raise ConfigError("--zero-engine deepspeed runs TP x DP only; drop --context-parallel-size")
        for flag, on in (("--overlap-param-gather", parallel.overlap_param_gather),
                         ("--async-save", async_save)):
            if on:
                raise ConfigError(f"{flag} belongs to the megatron engine; with --zero-engine deepspeed "
                                  "drop it (--zero-stage sets the sharding)")
        if self.offload_param != "none" and self.stage != 3:
            raise ConfigError(f"--zero-offload-param {self.offload_param} needs --zero-stage 3 (only stage 3 "
                              f"shards parameters); this run has --zero-stage {self.stage}")
        if self.bucket_size < 1:
            raise ConfigError("--zero-bucket-size must be at least 1 element")


def zero_settings(args) -> ZeroSettings:
    """Resolve the ZeRO flags (an argparse namespace) over a user's --deepspeed-config: a flag left
    unset takes the JSON's value, a flag that contradicts it is an error naming both."""
    user = read_user_config(args.deepspeed_config) if args.deepspeed_config else {}
    z = user.get("zero_optimization", {})

    def pick(flag: str, given, key: str, json_value, default):
        if given is not None and json_value is not None and given != json_value:
            raise ConfigError(f"{flag} {given} contradicts {key} = {json_value} in --deepspeed-config "
                              f"{args.deepspeed_config}; drop one of them")
        return next(v for v in (given, json_value, default) if v is not None)

    if args.use_distributed_optimizer:  # Megatron-LM's name for the megatron engine's ZeRO-1
        if args.zero_engine == "deepspeed":
            raise ConfigError("--use-distributed-optimizer belongs to the megatron engine; with --zero-engine "
                              "deepspeed drop it (--zero-stage sets the sharding)")
        if args.zero_stage not in (None, 1):
            raise ConfigError(f"--zero-stage {args.zero_stage} contradicts --use-distributed-optimizer (ZeRO-1); "
                              "drop one")
    stage_default = 1 if args.use_distributed_optimizer or args.zero_engine == "deepspeed" else 0
    return ZeroSettings(
        engine=args.zero_engine,
        stage=pick("--zero-stage", args.zero_stage, "zero_optimization.stage", _said(z.get("stage")), stage_default),
        offload_optimizer=pick("--zero-offload-optimizer", args.zero_offload_optimizer,
                               "zero_optimization.offload_optimizer.device",
                               _said(z.get("offload_optimizer", {}).get("device")), "none"),
        offload_param=pick("--zero-offload-param", args.zero_offload_param, "zero_optimization.offload_param.device",
                           _said(z.get("offload_param", {}).get("device")), "none"),
        bucket_size=pick("--zero-bucket-size", args.zero_bucket_size, "zero_optimization.reduce_bucket_size",
                         _said(z.get("reduce_bucket_size")), DEFAULT_BUCKET_ELEMENTS),
        deepspeed_config=args.deepspeed_config,
    )


def _said(value):
    """A JSON value that says something: Hugging Face-style configs write "auto" for "fill in for me"."""
    return None if value == "auto" else value


def read_user_config(path: str) -> dict:
    try:
        with open(path) as f:
            user = json.load(f)
    except OSError as e:
        raise ConfigError(f"--deepspeed-config {path}: {e.strerror}; pass a DeepSpeed JSON file") from None
    except ValueError as e:
        raise ConfigError(f"--deepspeed-config {path}: not valid JSON ({e})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"--deepspeed-config {path}: expected a JSON object")
    for section in ("optimizer", "scheduler"):
        if section in user:
            raise ConfigError(f"--deepspeed-config {path} has an {section!r} section; this project's AdamW and LR "
                              "schedule come from the training flags (--lr, --adam-beta1, ...): remove it")
    return user


def deepspeed_config(zero: ZeroSettings, global_batch_size: int, micro_batch_size: int, data_parallel_size: int,
                     clip_grad: float, bf16: bool, overlap_grad_reduce: bool) -> dict:
    """The effective DeepSpeed config: the user's JSON (if any) with our flags' keys laid over it.
    A key both set to different values is an error naming both."""
    zero_opt = {"stage": zero.stage, "reduce_bucket_size": zero.bucket_size, "overlap_comm": overlap_grad_reduce}
    if zero.stage == 3:
        zero_opt["stage3_prefetch_bucket_size"] = zero.bucket_size
    else:
        zero_opt["allgather_bucket_size"] = zero.bucket_size
    if zero.offload_optimizer != "none":
        zero_opt["offload_optimizer"] = {"device": zero.offload_optimizer}
    if zero.offload_param != "none":
        zero_opt["offload_param"] = {"device": zero.offload_param}
    ours = {
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": global_batch_size // (micro_batch_size * data_parallel_size),
        # DeepSpeed clips at 1.0 when the key is absent: always write ours.
        "gradient_clipping": clip_grad,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero_opt,
        # The client optimizer is torch's AdamW: DeepSpeed's own Adams compile C++ on first use.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # our metrics log prints every step
    }
    user = read_user_config(zero.deepspeed_config) if zero.deepspeed_config else {}
    return _lay_over(user, ours, zero.deepspeed_config, "")


def _lay_over(user: dict, ours: dict, path: str | None, prefix: str) -> dict:
    merged = dict(user)
    for key, value in ours.items():
        name = prefix + key
        theirs = _said(user.get(key))
        if isinstance(value, dict):
            merged[key] = _lay_over(theirs if isinstance(theirs, dict) else {}, value, path, name + ".")
        elif theirs is not None and theirs != value:
            raise ConfigError(f"--deepspeed-config {path} sets {name} = {theirs!r} but the flags give {value!r}; "
                              "make them agree or drop the key from the JSON")
        else:
            merged[key] = value
    return merged
