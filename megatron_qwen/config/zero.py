"""ZeRO data parallelism: which engine shards what (Megatron-DeepSpeed's flag names, docs/zero.md).

The megatron engine is megatron-core's DDP with its distributed optimizer: stage 0 (plain DDP)
or 1 (optimizer state sharded), at any TP/PP. The deepspeed engine hands the same model to
DeepSpeed for stages 1-3 (2: gradients sharded too; 3: parameters too), with optional CPU
offload, at TP x DP with PP=1.
"""

from dataclasses import dataclass

from megatron_qwen.config.deepspeed_json import none_if_auto, passed_to_deepspeed, read_json
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import PARALLEL, POSITIVE, ZERO, flag
from megatron_qwen.config.parallel import ParallelSettings

ENGINES = ("megatron", "deepspeed")
OFFLOAD_DEVICES = ("none", "cpu")
# megatron-core DDP's default bucket (40M elements); DeepSpeed's own default (5e8) makes CPU steps slow.
DEFAULT_BUCKET_ELEMENTS = 40_000_000


@dataclass(frozen=True)
class ZeroSettings:
    # Unset (None) by default where a --deepspeed_config may stand in (zero_settings).
    engine: str = flag("--zero-engine", group=ZERO, dest="zero_engine", default="megatron", unset=None,
                       choices=ENGINES,
                       help="megatron (default): megatron-core DDP and distributed optimizer (any TP/PP); deepspeed: "
                            "DeepSpeed ZeRO (TP x DP, PP=1)")
    stage: int = flag("--zero-stage", group=ZERO, dest="zero_stage", default=0, unset=None, choices=(0, 1, 2, 3),
                      help="1: optimizer state sharded over DP, 2: and gradients, 3: and parameters (deepspeed "
                           "engine). Unset: the --deepspeed_config's, else 1 with --use-distributed-optimizer or the "
                           "deepspeed engine, else 0")
    offload_optimizer: str = flag("--zero-offload-optimizer", group=ZERO, dest="zero_offload_optimizer",
                                  default="none", unset=None, choices=OFFLOAD_DEVICES,
                                  help="deepspeed engine: keep optimizer state and step in CPU memory (unset: the "
                                       "--deepspeed_config's, else none)")
    offload_param: str = flag("--zero-offload-param", group=ZERO, dest="zero_offload_param", default="none",
                              unset=None, choices=OFFLOAD_DEVICES,
                              help="deepspeed engine, stage 3: keep parameter shards in CPU memory (unset: the "
                                   "--deepspeed_config's, else none)")
    bucket_size: int = flag("--zero-bucket-size", group=ZERO, dest="zero_bucket_size", default=DEFAULT_BUCKET_ELEMENTS,
                            unset=None, bounds=POSITIVE,
                            help="deepspeed engine: elements per reduce / all-gather bucket (unset: the "
                                 f"--deepspeed_config's reduce_bucket_size, else {DEFAULT_BUCKET_ELEMENTS})")
    deepspeed_config: str | None = flag(  # a user's DeepSpeed JSON, under our flags
        "--deepspeed_config", "--deepspeed-config", group=ZERO, default=None,
        help="a DeepSpeed JSON config to start from: flags left unset take its values, a contradiction is an "
             "error; its optimizer and scheduler sections map onto our AdamW and LR schedule")
    # the deepspeed engine steps torch's AdamW, not DeepSpeed's CPU / fused Adam
    torch_adamw: bool = flag("--use-torch-adamw", group=ZERO, default=False,
                             help="deepspeed engine: step torch's AdamW instead of DeepSpeed's CPU Adam (optimizer "
                                  "offload) or fused Adam (GPU)")

    @property
    def deepspeed(self) -> bool:
        return self.engine == "deepspeed"

    @property
    def distributed_optimizer(self) -> bool:
        """megatron-core's distributed optimizer: ZeRO-1 on the megatron engine."""
        return not self.deepspeed and self.stage == 1

    def validate(self, parallel: ParallelSettings, async_save: bool) -> None:
        if not self.deepspeed:
            for flag, value in (("--zero-offload-optimizer", self.offload_optimizer),
                                ("--zero-offload-param", self.offload_param)):
                if value != "none":
                    raise ConfigError(f"{flag} {value} needs --zero-engine deepspeed (megatron-core keeps "
                                      "optimizer state and parameters on the accelerator)")
            if self.deepspeed_config:
                raise ConfigError(f"--deepspeed_config {self.deepspeed_config} needs --deepspeed (= --zero-engine "
                                  "deepspeed)")
            if self.torch_adamw:
                raise ConfigError("--use-torch-adamw chooses the DeepSpeed engine's optimizer; the megatron engine "
                                  "always steps megatron-core's: drop it, or pass --deepspeed")
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


@dataclass(frozen=True)
class ZeroAliasSettings:
    """Megatron-LM's and Megatron-DeepSpeed's names for ZeroSettings' values, read to resolve them; not stored."""

    deepspeed: bool = flag("--deepspeed", group=ZERO, default=False,
                           help="Megatron-DeepSpeed's name for --zero-engine deepspeed")
    no_pipeline_parallel: bool = flag(
        "--no-pipeline-parallel", group=ZERO, default=False,
        help="Megatron-DeepSpeed's flag for DeepSpeed without its pipeline engine: what the deepspeed engine "
             "always runs (needs PP=1)")
    use_distributed_optimizer: bool = flag("--use-distributed-optimizer", group=PARALLEL, default=False,
                                           help="ZeRO-1: shard optimizer state over DP")


def zero_settings(args) -> ZeroSettings:
    """Resolve the ZeRO flags (an argparse namespace) over a user's --deepspeed_config: a flag left
    unset takes the JSON's value, a flag that contradicts it is an error naming both."""
    user = read_json(args.deepspeed_config) if args.deepspeed_config else {}
    z = user.get("zero_optimization", {})

    def pick(flag: str, given, key: str, json_value, default):
        if given is not None and json_value is not None and given != json_value:
            raise ConfigError(f"{flag} {given} contradicts {key} = {json_value} in --deepspeed_config "
                              f"{args.deepspeed_config}; drop one of them")
        return next(v for v in (given, json_value, default) if v is not None)

    engine = _engine(args)
    if args.use_distributed_optimizer:  # Megatron-LM's name for the megatron engine's ZeRO-1
        if engine == "deepspeed":
            raise ConfigError("--use-distributed-optimizer belongs to the megatron engine; with --deepspeed "
                              "drop it (--zero-stage sets the sharding)")
        if args.zero_stage not in (None, 1):
            raise ConfigError(f"--zero-stage {args.zero_stage} contradicts --use-distributed-optimizer (ZeRO-1); "
                              "drop one")
    if args.no_pipeline_parallel and args.pipeline_model_parallel_size > 1:
        raise ConfigError(f"--no-pipeline-parallel contradicts --pipeline-model-parallel-size "
                          f"{args.pipeline_model_parallel_size}; drop one")
    stage_default = 1 if args.use_distributed_optimizer or engine == "deepspeed" else 0
    return ZeroSettings(
        engine=engine,
        stage=pick("--zero-stage", args.zero_stage, "zero_optimization.stage", none_if_auto(z.get("stage")),
                   stage_default),
        offload_optimizer=pick("--zero-offload-optimizer", args.zero_offload_optimizer,
                               "zero_optimization.offload_optimizer.device",
                               none_if_auto(z.get("offload_optimizer", {}).get("device")), "none"),
        offload_param=pick("--zero-offload-param", args.zero_offload_param, "zero_optimization.offload_param.device",
                           none_if_auto(z.get("offload_param", {}).get("device")), "none"),
        bucket_size=pick("--zero-bucket-size", args.zero_bucket_size, "zero_optimization.reduce_bucket_size",
                         none_if_auto(z.get("reduce_bucket_size")), DEFAULT_BUCKET_ELEMENTS),
        deepspeed_config=args.deepspeed_config,
        torch_adamw=args.torch_adamw,
    )


def _engine(args) -> str:
    """--deepspeed (Megatron-DeepSpeed's switch) is --zero-engine deepspeed."""
    if args.deepspeed and args.zero_engine == "megatron":
        raise ConfigError("--deepspeed contradicts --zero-engine megatron (--deepspeed means --zero-engine "
                          "deepspeed); drop one")
    return "deepspeed" if args.deepspeed else args.zero_engine or "megatron"


def read_user_config(path: str) -> dict:
    """The part of a user's DeepSpeed JSON that DeepSpeed itself gets (its optimizer and scheduler
    sections are our flags' values by now: deepspeed_flags.fill_unset_flags)."""
    return passed_to_deepspeed(read_json(path))


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
        # As megatron-core's DDP (grad_reduce_in_fp32): bf16 gradients are accumulated over micro-batches and
        # reduced over DP in fp32 (DeepSpeed's default is the model dtype for both); master weights are fp32.
        "data_types": {"grad_accum_dtype": "fp32"},
        "communication_data_type": "fp32",
        "zero_optimization": zero_opt,
        # The client optimizer (training/deepspeed_optimizer.py) may be torch's AdamW, also with offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # our metrics log prints every step
    }
    user = read_user_config(zero.deepspeed_config) if zero.deepspeed_config else {}
    return _lay_over(user, ours, zero.deepspeed_config, "")


# Keys of ours a user's JSON may change without changing the numbers: how often DeepSpeed prints, and
# its check for untested optimizers (every optimizer this engine builds is on DeepSpeed's ZeRO list).
USER_MAY_SET = ("steps_per_print", "zero_allow_untested_optimizer")


def _lay_over(user: dict, ours: dict, path: str | None, prefix: str) -> dict:
    merged = dict(user)
    for key, value in ours.items():
        name = prefix + key
        theirs = none_if_auto(user.get(key))
        if name in USER_MAY_SET and theirs is not None:
            continue
        if isinstance(value, dict):
            merged[key] = _lay_over(theirs if isinstance(theirs, dict) else {}, value, path, name + ".")
        elif theirs is not None and theirs != value:
            raise ConfigError(f"--deepspeed_config {path} sets {name} = {theirs!r} but the flags give {value!r}; "
                              "make them agree or drop the key from the JSON")
        else:
            merged[key] = value
    return merged
