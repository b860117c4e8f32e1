"""Checkpoint storage, below the layers that read and write checkpoints (training's two engines, hf/,
inference, tools): the directory layout and its tracker, staged writes published whole with a manifest of
checksums, one writer per directory, reading that runs no code and checks every file first, what a
checkpoint records beside its tensors (for us and for Megatron-LM), weights-only load and save, and
DeepSpeed's files."""
