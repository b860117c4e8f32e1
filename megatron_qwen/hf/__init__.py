"""Qwen's published Hugging Face checkpoints in and out (docs/checkpoints.md).

layouts.py  tensor names and config.json of the two layouts (Qwen-1 remote code, transformers' Qwen2)
files.py    safetensors / pytorch_model.bin read lazily; sharded safetensors written streamed
source.py   recognizing a Hugging Face --load (or a checkpoint converted from one), checked up front
load.py     Hugging Face weights into this rank's chunks at any layout, or into a checkpoint of ours
export.py   a checkpoint of ours (any layout) out to a Hugging Face directory, one layer at a time
relayout.py a Hugging Face directory rewritten in the other layout, tensor by tensor, without megatron-core
side_files.py, generation.py, tokenizer_files.py  what an export holds besides its weights: config.json,
            the published generation settings, the tokenizer files
random_model.py  random weights of a shape in either layout, for the checks and benchmarks
"""
