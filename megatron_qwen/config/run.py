"""A run's resolved configuration: the settings of every layer in one frozen dataclass, which is what
checkpoints store (a new field needs a default, or checkpoints written before it stop loading:
RunConfig.from_dict). The command line that resolves one is training/arguments.py."""

from dataclasses import asdict, dataclass, field, fields, is_dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import SHAPE, flag
from megatron_qwen.config.model import MODEL_PRESETS, BuildSettings, QwenModelConfig
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.config.ppo import PPOSettings
from megatron_qwen.config.settings import CheckpointSettings, DataSettings, LogSettings, TrainSettings
from megatron_qwen.config.zero import ZeroSettings, deepspeed_config


@dataclass(frozen=True)
class RunConfig:
    """A run's resolved settings. Library code that only builds a model constructs one directly
    (RunConfig(recipe=..., model_size=..., model=...), the other sections' defaults)."""

    recipe: str
    model_size: str = flag("--model-size", group=SHAPE, unset="tiny", help=f"preset: {', '.join(MODEL_PRESETS)}")
    model: QwenModelConfig
    build: BuildSettings = field(default_factory=BuildSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings = field(default_factory=DataSettings)
    log: LogSettings = field(default_factory=LogSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    zero: ZeroSettings = field(default_factory=ZeroSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)  # the PPO job's (config/ppo.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The inverse of to_dict: a run's configuration as a checkpoint stores it, also in older layouts:
        before the zero section ZeRO-1 was parallel.use_distributed_optimizer; before the fusions
        moved to the build settings, compile_layers was train.compile_layers."""
        parallel, train, build = dict(d["parallel"]), dict(d["train"]), dict(d["build"])
        zero = d.get("zero", {"stage": int(parallel.get("use_distributed_optimizer", False))})
        parallel.pop("use_distributed_optimizer", None)
        if "compile_layers" in train:
            build["compile_layers"] = train.pop("compile_layers")
        return from_stored(cls, {**d, "parallel": parallel, "train": train, "build": build, "zero": zero})

    def describe(self) -> str:
        """Every resolved setting, one per line, as printed at start (and saved in checkpoints)."""

        def flatten(prefix: str, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    yield from flatten(f"{prefix}.{k}" if prefix else k, v)
            else:
                yield f"  {prefix} {'.' * max(2, 44 - len(prefix))} {value}"

        return "\n".join(["-------------------- resolved configuration --------------------",
                          *flatten("", self.to_dict())])

    def validate(self, world_size: int) -> None:
        """Refuse a configuration that cannot run: the rules between flags (files: training/preflight.py)."""
        m, b, p, t = self.model, self.build, self.parallel, self.train
        if m.kv_channels is None and m.hidden_size % m.num_attention_heads != 0:
            raise ConfigError(f"--hidden-size {m.hidden_size} is not a multiple of "
                              f"--num-attention-heads {m.num_attention_heads}; pass --kv-channels")
        if m.padded_vocab_size < m.vocab_size:
            raise ConfigError(f"the model has {m.padded_vocab_size} vocabulary rows, fewer than --vocab-size "
                              f"{m.vocab_size}; raise --make-vocab-size-divisible-by or --vocab-size")
        p.validate(world_size, m.num_layers, m.num_attention_heads, m.padded_vocab_size)
        self.zero.validate(p, self.checkpoint.async_save)
        if self.zero.deepspeed and t.skip_loss_spikes:
            raise ConfigError("--skip-loss-spikes needs --zero-engine megatron: DeepSpeed applies the update before "
                              "the batch's loss is known; drop it (--loss-spike-factor alone still reports spikes)")
        if b.compile_layers and (self.zero.deepspeed or b.transformer_impl == "te"):
            raise ConfigError("--compile-layers is built for the megatron engine with the local, sdpa or flash back "
                              "end (transformer-engine's layer is fused already; the DeepSpeed engine wraps the "
                              "model itself): drop it, or pass --zero-engine megatron --transformer-impl sdpa")
        dp = p.data_parallel_size(world_size)
        if t.global_batch_size % (t.micro_batch_size * dp) != 0:
            raise ConfigError(
                f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
                f"{t.micro_batch_size} x data-parallel size {dp}; make it a multiple of "
                f"{t.micro_batch_size * dp}")
        if t.seq_length > m.max_position_embeddings:
            raise ConfigError(f"--seq-length {t.seq_length} exceeds --max-position-embeddings "
                              f"{m.max_position_embeddings}; raise --max-position-embeddings or shorten --seq-length")
        if t.seq_length % (2 * p.context_parallel_size) != 0 and p.context_parallel_size > 1:
            raise ConfigError(f"--seq-length {t.seq_length} must be a multiple of 2 x --context-parallel-size")
        if p.context_parallel_size > 1 and b.transformer_impl != "te":
            raise ConfigError("--context-parallel-size > 1 needs transformer-engine attention (a GPU with "
                              "transformer-engine installed, --transformer-impl transformer_engine); "
                              f"this run uses the {b.transformer_impl!r} back end")
        if p.sequence_parallel and t.seq_length % p.tensor_model_parallel_size != 0:
            raise ConfigError(f"--sequence-parallel needs --seq-length divisible by "
                              f"--tensor-model-parallel-size {p.tensor_model_parallel_size}")
        self.data.check()
        self.log.check()
        if self.data.tokenizer_type == "NullTokenizer" and self.data.data_format != "pretrain":
            raise ConfigError("--tokenizer-type NullTokenizer is for pretraining shards; chat SFT and comparison "
                              "pairs render their turns with Qwen's tokenizer: drop the flag")
        if self.data.data_format == "pairs":
            self._validate_pairs()
        if self.data.data_format == "prompts":
            self._validate_ppo(dp)
        if self.checkpoint.finetune and not self.checkpoint.load:
            raise ConfigError(f"{self.recipe} starts from a trained model: pass --load CHECKPOINT_DIR "
                              "(or --no-finetune to train from scratch)")

    def _validate_pairs(self) -> None:
        """A reward run's batches: both responses of a pair in one micro-batch (data/pairs.py)."""
        if self.train.micro_batch_size % 2:
            raise ConfigError(f"--micro-batch-size {self.train.micro_batch_size} is odd; batch sizes count "
                              "sequences and a pair's two responses share a micro-batch: make it even (2 = one pair)")
        if self.data.mock_data:
            raise ConfigError("--mock-data has no comparison pairs; pass --data-path with shards written by "
                              "tools/preprocess_data.py --pairs")
        if self.parallel.context_parallel_size > 1:
            raise ConfigError("--context-parallel-size > 1 is not supported for the reward model (the end token's "
                              "value would sit on one context-parallel rank); drop it")

    def _validate_ppo(self, dp: int) -> None:
        """What PPO's rollouts and updates run on (docs/ppo.md): the megatron engine, no virtual pipeline, no
        sequence or context parallelism, and each rank's responses whole groups of one prompt's samples."""
        o, p = self.ppo, self.parallel
        for given, what in ((not o.prompt_data_path, "--prompt-data-path: the prompts to sample responses for"),
                            (not o.reward_model, "--reward-model: the reward model's --save directory")):
            if given:
                raise ConfigError(f"PPO needs {what}")
        unsupported = {"--zero-engine deepspeed": self.zero.deepspeed, "--sequence-parallel": p.sequence_parallel,
                       "--context-parallel-size > 1": p.context_parallel_size > 1,
                       "--num-layers-per-virtual-pipeline-stage": p.num_layers_per_virtual_pipeline_stage}
        for name, on in unsupported.items():
            if on:
                raise ConfigError(f"{name} is not supported by PPO (its rollouts decode with a KV cache on the "
                                  "trained layout: docs/ppo.md); drop it")
        per_rank = self.train.global_batch_size // dp
        if per_rank % o.samples_per_prompt:
            raise ConfigError(f"--global-batch-size {self.train.global_batch_size} gives each of the {dp} "
                              f"data-parallel ranks {per_rank} responses, not a multiple of --samples-per-prompt "
                              f"{o.samples_per_prompt}; make it a multiple of {o.samples_per_prompt * dp}")
        if self.ppo.max_new_tokens >= self.train.seq_length:
            raise ConfigError(f"--max-new-tokens {o.max_new_tokens} leaves no room for a prompt in --seq-length "
                              f"{self.train.seq_length}; lower it or raise --seq-length")

    def effective_deepspeed_config(self, world_size: int) -> dict:
        """The DeepSpeed config this run gives DeepSpeed (--zero-engine deepspeed): config/zero.py."""
        t, p = self.train, self.parallel
        return deepspeed_config(self.zero, t.global_batch_size, t.micro_batch_size, p.data_parallel_size(world_size),
                                t.optim.clip_grad, self.build.precision == "bf16", p.overlap_grad_reduce)

    def num_microbatches(self, world_size: int) -> int:
        dp = self.parallel.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)


def from_stored(cls, stored: dict):
    """``cls`` from its to_dict form: nested settings from their dicts, lists back to tuples. A field
    newer than the checkpoint takes its default."""
    values = dict(stored)
    for f in fields(cls):
        if f.name in values and is_dataclass(f.type):
            values[f.name] = from_stored(f.type, values[f.name])
        elif f.name in values and getattr(f.type, "__origin__", None) is tuple:
            values[f.name] = tuple(values[f.name])
    return cls(**values)
