"""The parallel layouts of tests/test_hf_convert.py, launched once by torchrun (4 processes).

At each --layouts TPxPP[vV] (data parallel over the remaining processes) and for each --load
source (a Hugging Face directory or a checkpoint converted from one), the model is built and
loaded the way a job does it (parse_run_config, build_model_and_optimizer, MegatronCheckpointer.load),
then run forward on fixed tokens through megatron-core's pipeline schedule. The last pipeline stage's first tensor-
and data-parallel rank writes the logits, gathered over the vocabulary, to OUT/LAYOUT/logits_{i}.pt.
The first source is also saved, at the last layout, as a training checkpoint in OUT/saved.
One launch for every layout: starting processes costs more here than the work itself.
"""

import argparse
import os

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_qwen.config.recipes import PRETRAIN
from megatron_qwen.platform.distributed import destroy_distributed, init_distributed
from megatron_qwen.training.arguments import parse_run_config
from megatron_qwen.training.megatron_checkpoint import MegatronCheckpointer
from megatron_qwen.training.megatron_engine import build_model_and_optimizer


def forward_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits on the last pipeline stage (None elsewhere), one sequence per
    micro-batch (the interleaved schedule wants as many micro-batches as pipeline stages)."""
    batch, seq = tokens.shape

    def step(data_iterator, chunk):
        out = chunk(next(data_iterator), torch.arange(seq).unsqueeze(0), None)

        def keep(output):
            return output.sum() * 0, torch.tensor(1), {"logits": gather_from_tensor_model_parallel_region(output)}

        return out, keep

    iterators = [iter(tokens.split(1)) for _ in model]
    with torch.no_grad():
        stored = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iterators if len(model) > 1 else iterators[0],
            model=model if len(model) > 1 else model[0], num_microbatches=batch, seq_length=seq, micro_batch_size=1,
            forward_only=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.cat([x["logits"] for x in stored])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", nargs="+", required=True,
                    help="TPxPP or TPxPPvV (V layers per virtual pipeline stage), e.g. 1x1 2x1 2x2 2x2v1")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("sources", nargs="+")
    a = ap.parse_args()
    tokens = torch.load(a.tokens)
    batch, seq = tokens.shape
    for layout in a.layouts:
        tp, rest = layout.split("x")
        pp, _, vp = rest.partition("v")
        out = os.path.join(a.out, layout)
        os.makedirs(out, exist_ok=True)
        for i, source in enumerate(a.sources):
            save = i == 0 and layout == a.layouts[-1]
            flags = ["--load", source, "--mock-data", "--seq-length", str(seq), "--micro-batch-size", str(batch),
                     "--train-iters", "1", "--lr", "1e-3", "--lr-warmup-iters", "0", "--transformer-impl", "local",
                     "--tensor-model-parallel-size", tp, "--pipeline-model-parallel-size", pp]
            flags += ["--num-layers-per-virtual-pipeline-stage", vp] if vp else []
            cfg = parse_run_config(PRETRAIN, flags + (["--save", os.path.join(a.out, "saved")] if save else []))
            init_distributed(cfg.parallel, cfg.model.num_layers, cfg.build.seed)
            # Random initial weights (megatron-core's own init): the load must overwrite every one.
            model, optimizer, scheduler = build_model_and_optimizer(cfg, initialize=False)
            checkpointer = MegatronCheckpointer(cfg, model, optimizer, scheduler)
            state = checkpointer.load()
            assert state.iteration == 0, state
            logits = forward_logits(model, tokens)
            writer = parallel_state.get_tensor_model_parallel_rank() == 0 == parallel_state.get_data_parallel_rank()
            if logits is not None and writer:
                torch.save(logits, os.path.join(out, f"logits_{i}.pt"))
            if save:
                checkpointer.save(state)
        parallel_state.destroy_model_parallel()  # the next layout regroups the same processes
    destroy_distributed()


if __name__ == "__main__":
    main()
