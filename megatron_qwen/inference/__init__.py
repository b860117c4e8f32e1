from megatron_qwen.inference.generate import (
    KVCacheDecoder,
    Sampling,
    generate,
    generation_defaults,
    load_model_for_inference,
)

__all__ = ["generate", "generation_defaults", "Sampling", "KVCacheDecoder", "load_model_for_inference"]
