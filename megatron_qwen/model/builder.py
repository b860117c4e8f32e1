"""Build the Qwen model chunks this rank holds, and wrap them for data parallelism.

Pipeline parallelism is decided here (which layers, whether this chunk has the embedding or
the output layer); tensor parallelism lives inside megatron-core's layers; data parallelism is
the DDP wrapper at the end, for the megatron engine. The DeepSpeed engine wraps the same chunks
in DeepSpeed's own (training/deepspeed_engine.py; ZeRO-3 partitions their parameters), and a
Hugging Face --load reads each rank's share of every tensor into them (hf/load.py).
"""

import dataclasses
import importlib.util

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_qwen.config.model import BuildSettings, QwenModelConfig
from megatron_qwen.config.parallel import ParallelSettings
from megatron_qwen.model.compile import compile_layers
from megatron_qwen.model.gpt import QwenGPTModel
from megatron_qwen.model.init import initialize_weights
from megatron_qwen.model.reward import QwenRewardModel
from megatron_qwen.model.spec import qwen_block_spec
from megatron_qwen.platform.backends import PACKED_SEQUENCE_FORM
from megatron_qwen.platform.distributed import on_gpu


def _installed(*modules: str) -> bool:
    """Whether every compiled extension a megatron-core fusion imports is there (none ships with it)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


def build_model(model: QwenModelConfig, parallel: ParallelSettings, build: BuildSettings, *, initialize: bool = True,
                megatron_ddp: bool = True) -> list[QwenGPTModel]:
    """This rank's chunks (one per virtual pipeline stage) of ``model`` at the ``parallel`` layout, built as
    ``build`` says, with layout-independent initial weights. Training, inference and checkpoint conversion all
    build through here, so a model rebuilt from a checkpoint's stored configuration is the trained one.
    ``megatron_ddp``: the chunks will be wrapped in megatron-core's DDP (False: the DeepSpeed engine's).
    Needs the process groups (platform/distributed.py)."""
    tcfg = transformer_config(model, parallel, build, megatron_ddp)
    return _build_chunks(model, tcfg, build, initialize)


def build_on_meta(model: QwenModelConfig, parallel: ParallelSettings, build: BuildSettings) -> list[QwenGPTModel]:
    """This rank's chunks with shapes but no storage: parameter counts and memory plans of
    models far larger than the machine, and models about to be filled from files."""
    tcfg = dataclasses.replace(transformer_config(model, parallel, build),
                               use_cpu_initialization=True, perform_initialization=False)
    with torch.device("meta"):
        return _build_chunks(model, tcfg, build, initialize=False)


def transformer_config(model: QwenModelConfig, parallel: ParallelSettings, opts: BuildSettings,
                       megatron_ddp: bool = True) -> TransformerConfig:
    """``megatron_ddp``: the model will be wrapped in megatron-core's DDP (not the DeepSpeed engine's)."""
    bf16 = opts.precision == "bf16"
    recompute = {}
    if opts.recompute_granularity == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=opts.recompute_num_layers)
    elif opts.recompute_granularity == "selective":
        recompute = dict(recompute_granularity="selective")
    gpu = on_gpu()
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        add_bias_linear=False,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=opts.hidden_dropout,
        attention_dropout=opts.attention_dropout,
        init_method_std=model.init_method_std,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_size(model.num_layers),
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        # megatron-core initializes each local shard (and, only then, tags weights with their
        # tensor-parallel attributes); model/init.py then overwrites the values with draws that
        # do not depend on the layout.
        perform_initialization=True,
        use_cpu_initialization=False,
        # Fusions are CUDA kernels; on the CPU the unfused paths compute the same thing.
        bias_activation_fusion=gpu and opts.bias_swiglu_fusion,
        bias_dropout_fusion=gpu and opts.bias_dropout_fusion,
        # The local attention's fused softmax is a compiled extension (Megatron-LM's or apex's), not
        # part of megatron-core: without it megatron-core would fail at the first bf16 forward.
        masked_softmax_fusion=gpu and opts.masked_softmax_fusion and _installed(
            "scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda"),
        apply_rope_fusion=gpu and opts.rope_fusion and opts.transformer_impl == "te",
        # Weight-gradient accumulation straight into fp32 main_grad needs apex's kernel, and the main_grad
        # buffers of megatron-core's DDP: DeepSpeed gives the parameters none.
        gradient_accumulation_fusion=gpu and megatron_ddp and opts.gradient_accumulation_fusion
        and _installed("fused_weight_gradient_mlp_cuda"),
        # With PP=2 and virtual stages, the previous and next stage are one peer, and batched
        # p2p pairs sends and receives in posting order: activations and gradients swap
        # silently (Megatron-LM issue 750). Unbatched exchange is exact at every layout.
        batch_p2p_comm=False,
        calculate_per_token_loss=True,
        **recompute,
    )


def _build_chunks(model: QwenModelConfig, tcfg: TransformerConfig, opts: BuildSettings,
                  initialize: bool) -> list[QwenGPTModel]:
    vp_size = tcfg.virtual_pipeline_model_parallel_size
    chunks = []
    model_class = _model_class(opts.head)
    for vp_stage in range(vp_size or 1):
        stage = vp_stage if vp_size else None
        chunk = model_class(
            config=tcfg,
            transformer_layer_spec=qwen_block_spec(opts.transformer_impl,
                                                   get_num_layers_to_build(tcfg, vp_stage=stage),
                                                   fused_norm=on_gpu() and opts.rmsnorm_fusion),
            vocab_size=model.padded_vocab_size,
            max_sequence_length=model.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=False,  # Qwen's embedding and output are untied
            position_embedding_type="rope",
            rotary_percent=1.0,
            rotary_base=model.rotary_base,
            vp_stage=stage,
            chunked_loss=opts.cross_entropy_fusion,
            compiled_loss=on_gpu() and opts.cross_entropy_fusion,
            packed_form=PACKED_SEQUENCE_FORM[opts.transformer_impl],
        )
        chunks.append(chunk)
    if initialize:
        initialize_weights(chunks, model, opts.seed, torch.device("cpu") if opts.cpu_initialization else None)
    return chunks


def _model_class(head: str) -> type[QwenGPTModel]:
    """The model with ``head`` (config/model.py's BuildSettings.head) on its last stage."""
    return QwenRewardModel if head == "reward" else QwenGPTModel


def wrap_for_training(chunks: list[QwenGPTModel], parallel: ParallelSettings, distributed_optimizer: bool,
                      compiled_layers: bool = False) -> list[DistributedDataParallel]:
    """Move to the device, compile the layers if asked (model/compile.py), cast to bf16 if asked, and wrap
    each chunk in megatron-core DDP (with its buffers laid out for the distributed optimizer, ZeRO-1, if
    asked)."""
    tcfg = chunks[0].config
    if on_gpu():
        chunks = [c.cuda(torch.cuda.current_device()) for c in chunks]
    if compiled_layers:
        compile_layers(chunks)
    if tcfg.bf16:
        chunks = [Float16Module(tcfg, c) for c in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        use_distributed_optimizer=distributed_optimizer,
    )
    return [
        DistributedDataParallel(
            config=tcfg, ddp_config=ddp_config, module=c,
            # Only the first chunk starts reducing early; the others overlap with compute.
            disable_bucketing=(i > 0),
        )
        for i, c in enumerate(chunks)
    ]


def unwrap(chunk) -> QwenGPTModel:
    """The GPTModel inside the wrappers of wrap_for_training (DDP, Float16Module)."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk
