"""Planning a training run: what a layout costs before any GPU is used (docs/planning.md; tools/plan.py).

memory.py       memory per GPU of a layout: parameters, gradients, optimizer state, activations
zero_memory.py  the model states of the DeepSpeed engine's ZeRO stages and offload
hardware.py     the cluster: achievable FLOP/s and the links
step_time.py    a step-time heuristic that ranks layouts
search.py       every layout training accepts on N GPUs, each with its memory and step time
"""
