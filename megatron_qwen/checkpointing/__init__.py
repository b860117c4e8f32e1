"""Checkpoint storage, below the layers that read and write checkpoints (training's two engines, hf/,
inference, tools): the directory layout and its tracker, staged writes published whole, what a
checkpoint records beside its tensors, weights-only load and save, and DeepSpeed's files."""
