"""How the model and batch are split across processes, and the checks that go with it."""

from dataclasses import dataclass

from megatron_qwen.config.errors import ConfigError
from megatron_qwen.config.flags import PARALLEL, POSITIVE, flag


@dataclass(frozen=True)
class ParallelSettings:
    tensor_model_parallel_size: int = flag("--tensor-model-parallel-size", group=PARALLEL, default=1, bounds=POSITIVE)
    pipeline_model_parallel_size: int = flag("--pipeline-model-parallel-size", group=PARALLEL, default=1,
                                             bounds=POSITIVE)
    # Layers per virtual pipeline chunk (interleaved 1F1B); None means plain 1F1B.
    num_layers_per_virtual_pipeline_stage: int | None = flag("--num-layers-per-virtual-pipeline-stage",
                                                             group=PARALLEL, default=None, bounds=POSITIVE)
    context_parallel_size: int = flag("--context-parallel-size", group=PARALLEL, default=1, bounds=POSITIVE)
    sequence_parallel: bool = flag("--sequence-parallel", group=PARALLEL, default=False)
    overlap_grad_reduce: bool = flag("--overlap-grad-reduce", group=PARALLEL, default=False)
    overlap_param_gather: bool = flag("--overlap-param-gather", group=PARALLEL, default=False)
    distributed_timeout_minutes: int = flag("--distributed-timeout-minutes", group=PARALLEL, default=30,
                                               bounds=POSITIVE)

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (
            self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size
        )

    def virtual_pipeline_size(self, num_layers: int) -> int | None:
        if self.num_layers_per_virtual_pipeline_stage is None:
            return None
        return num_layers // (self.pipeline_model_parallel_size * self.num_layers_per_virtual_pipeline_stage)

    def validate(self, world_size: int, num_layers: int, num_attention_heads: int,
                 padded_vocab_size: int) -> None:
        tp, pp, cp = (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                      self.context_parallel_size)
        if world_size % (tp * pp * cp) != 0:
            raise ConfigError(
                f"world size {world_size} is not a multiple of TP x PP x CP = {tp}x{pp}x{cp} = {tp * pp * cp}; "
                "launch a multiple of that many processes or change the parallel sizes")
        if num_attention_heads % tp != 0:
            raise ConfigError(f"--tensor-model-parallel-size {tp} does not divide the "
                              f"{num_attention_heads} attention heads; pick a divisor of {num_attention_heads}")
        if padded_vocab_size % tp != 0:
            raise ConfigError(f"--tensor-model-parallel-size {tp} does not divide the padded vocabulary "
                              f"({padded_vocab_size} rows); pick a power of two")
        if num_layers % pp != 0:
            raise ConfigError(f"--pipeline-model-parallel-size {pp} does not divide the {num_layers} layers")
        vp_layers = self.num_layers_per_virtual_pipeline_stage
        if vp_layers is not None:
            if pp < 2:
                raise ConfigError("--num-layers-per-virtual-pipeline-stage needs "
                                  "--pipeline-model-parallel-size of at least 2")
            if (num_layers // pp) % vp_layers != 0:
                raise ConfigError(
                    f"--num-layers-per-virtual-pipeline-stage {vp_layers} does not divide the "
                    f"{num_layers // pp} layers of each pipeline stage")
        if self.sequence_parallel and tp == 1:
            raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size of at least 2")
