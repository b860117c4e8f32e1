from megatron_qwen.inference.generate import greedy_generate, load_model_for_inference

__all__ = ["greedy_generate", "load_model_for_inference"]
