"""Model FLOPs per token, the one formula behind every TFLOP/s and MFU figure we print.

Per layer and token, the forward pass multiplies-and-adds (2 FLOPs each):
  QKV projection 3h*h, output projection h*h, SwiGLU MLP 3*h*f (gate, up, down),
  attention scores QK^T and the weighted sum of V: 2*s*h  (counted over the full s x s
  matrix, as Megatron-LM counts it, although causal attention needs half).
The output layer adds h*V (the reward model's scalar head: h). Backward costs twice the forward, so
training = 3 x forward:

  FLOPs/token = 3 * 2 * [ L * (4h^2 + 3hf + 2sh) + hV ]

For Qwen-7B at s=2048 this gives 45.8 GFLOP/token (docs/qwen.md section 9: about 46).
Recompute is not counted: this is model FLOPs (MFU), not hardware FLOPs.
"""

from megatron_qwen.config.model import QwenModelConfig

# Dense bf16 peak of the chips we report on (vendor datasheets), TFLOP/s.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "H800": 989.0, "A800": 312.0}


def training_flops_per_token(model: QwenModelConfig, seq_length: int, head: str = "lm") -> float:
    h, f, L = model.hidden_size, model.ffn_hidden_size, model.num_layers
    per_layer = 4 * h * h + 3 * h * f + 2 * seq_length * h
    outputs = 1 if head == "reward" else model.padded_vocab_size
    return 6.0 * (L * per_layer + h * outputs)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name, or None when unknown (the CPU)."""
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in device_name.upper():
            return peak
    return None
