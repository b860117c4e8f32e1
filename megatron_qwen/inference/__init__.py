from megatron_qwen.inference.generate import KVCacheDecoder, Sampling, generate, load_model_for_inference

__all__ = ["generate", "Sampling", "KVCacheDecoder", "load_model_for_inference"]
