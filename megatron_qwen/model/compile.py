"""Each transformer layer as one compiled graph while training (``--compile-layers``).

megatron-core's local layer is a few hundred small kernels per layer, launched one by one from Python:
norms, RoPE (in fp32, with its casts), bias adds, residual adds, layout copies around the attention
kernel. torch.compile traces a layer's forward into one graph and its backward into another, fuses
those elementwise passes into a few kernels, and leaves the matrix products and the attention kernel
as they are. Every layer of a chunk has the same code and shapes, so one compilation serves them all.
"""

import warnings

import torch


def compile_layers(chunks: list[torch.nn.Module]) -> None:
    """Compile each layer's forward in place (hooks and the modules around the layers stay eager)."""
    # megatron-core's row-parallel linear passes no TP group and warns about it, on rank 0 only, at every
    # call: traced, that warning cuts each layer into several graphs (nine with torch 2.13) on rank 0 alone.
    # Compiled code skips warnings.warn instead (torch 2.11 and later; older versions keep the extra graphs).
    ignored = getattr(torch._dynamo.config, "ignore_logging_functions", None)
    if ignored is not None:
        ignored.add(warnings.warn)
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            # dynamic=False: one graph for the run's fixed [seq, micro-batch] shape.
            layer.forward = torch.compile(layer.forward, dynamic=False)
