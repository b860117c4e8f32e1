"""Correctness stage of bench/gpu_check.sh: this device against the CPU, bf16 against fp32 (each back end,
and compiled layers), RoPE precision, fused AdamW and the chunked loss, on the tiny preset from the CPU's
initial weights (the loss also at Qwen's vocabulary).

    CUDA_VISIBLE_DEVICES= python bench/gpu/check_correctness.py reference REF.pt [--quick]   # the CPU run
    python bench/gpu/check_correctness.py compare REF.pt OUT.json [--quick]                  # on the device

--quick (the CPU dry run) trains 2 steps instead of 5 and takes the RoPE tensor check at 4 heads and
512 positions instead of the 1.8B shape at 2048 and 8192; every check still runs.

Run by gpu_check.sh with PYTHONPATH=<repo>:<repo>/bench. Every run here draws its initial weights
on the CPU (model/init.py, device="cpu"), so the device's runs start from the CPU run's exact weights.

Tolerances, and why:
- device fp32 vs CPU fp32, 1e-4 relative (max |logit difference| / max |logit|; each of 5 losses):
  the same fp32 arithmetic in another order (GPU kernels reduce differently) stays near 1e-6;
  1e-4 is the parity suite's bound for its 5-step curves.
- bf16 vs fp32 on the device (each back end, and sdpa with compiled layers), logits 2e-2 relative (L2)
  and losses 2e-3 relative: bf16 keeps 8 significant bits (unit roundoff u = 2^-9 = 2e-3); the bf16
  model rounds its weights, every matmul output and activation, and the CPU measures 5.8e-3 (3u) on the
  logits and at most 3.5e-4 on the losses. 2e-2 and 2e-3 leave room for GPU kernels that accumulate in
  other orders while still failing on the errors that matter: dropping the causal mask moves the logits
  by 0.18, and a wrong gradient shows in the losses, which fall by 1% over these 5 steps.
- fused vs foreach AdamW, losses 1e-5 relative: the same update in fp32, in another order.
- the chunked loss (model/loss.py; compiled on a GPU) vs megatron-core's, bf16 tiny model, losses 1e-4
  relative: both take the fp32 loss of the same bf16 logits and round its gradient to bf16 once; kernels
  that round an element the other way move the losses by ~1e-6, a wrong gradient by the 1% these 5 steps
  fall.
- the chunked loss vs torch's cross entropy in fp64 at Qwen's 151,936 rows, from the same logits: loss
  1e-5 relative and, for fp32 logits, logits gradient 1e-5 relative L2 (fp32 sums over 151,936 rows;
  the CPU measures 6e-8 and 1.7e-7, torch's own fp32 cross entropy 1.7e-6 and 8.8e-6); for bf16 logits,
  gradient 2e-3, as it is rounded to bf16 once (u = 2^-9 = 2e-3; the CPU measures 3.5e-4).
The RoPE figures are reported, not judged: they show what rotating in fp32 changes.
"""

import importlib.util
import json
import sys

import torch
from bench_loss import VOCAB
from bench_loss import errors as loss_errors
from bench_train import build_session
from megatron.core import parallel_state
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.identity_op import IdentityOp

from megatron_qwen.model.builder import unwrap
from megatron_qwen.model.loss import vocab_parallel_cross_entropy
from megatron_qwen.platform.distributed import compute_device, on_gpu

STEPS, QUICK_STEPS = 5, 2
TINY = ["--model-size", "tiny", "--seq-length", "128", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--seed", "5", "--hidden-dropout", "0", "--attention-dropout", "0"]
TOL_DEVICE_VS_CPU = 1e-4
TOL_BF16_LOGITS, TOL_BF16_LOSS = 2e-2, 2e-3
TOL_FUSED_ADAM = 1e-5
TOL_LOSS_VS_MEGATRON, TOL_LOSS, TOL_LOSS_GRAD_BF16 = 1e-4, 1e-5, 2e-3


def probe_tokens(seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 1024, (2, seq), generator=torch.Generator().manual_seed(0))
    return tokens, torch.arange(seq).unsqueeze(0).expand_as(tokens)


def logits_of(model, seq: int) -> torch.Tensor:
    tokens, positions = (t.to(compute_device()) for t in probe_tokens(seq))
    with torch.no_grad():
        return model(tokens, positions, None).float().cpu()


def run_tiny(extra: list[str], steps: int) -> dict:
    """Logits of the initial model on a fixed batch, then the losses of ``steps`` training steps."""
    session = build_session(TINY + extra + ["--use-cpu-initialization"], steps)
    logits = logits_of(session.model[0], 128)
    return {"logits": logits, "losses": [session.step()[0] for _ in range(steps)]}


def rel_max(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def worst_loss_rel(losses: list[float], ref: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, ref))


def check(name: str, value: float, tolerance: float, metric: str) -> dict:
    return {"name": name, "metric": metric, "value": value, "tolerance": tolerance, "pass": value <= tolerance}


def print_checks(checks: list[dict]) -> int:
    """One line per check; the exit status: 0 when every check passed."""
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['name']}: {c['value']:.3g} ({c['metric']}, tolerance "
              f"{c['tolerance']:g})", flush=True)
    return 0 if all(c["pass"] for c in checks) else 1


def rope_tensor_errors(seq: int, heads: int = 16, head_dim: int = 128) -> dict:
    """A 1.8B-shaped query and key (16 heads of 128) in bf16, rotated by megatron-core's unfused RoPE in
    bf16 (stock) and in fp32 then rounded (ours), each against the exact fp32 rotation of the same input."""
    device = compute_device()
    freqs = RotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=10000)(seq).to(device)
    config = unwrap(build_session(TINY, 1).model[0]).config  # the unfused path's flags, as the model has them
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(seq, 1, heads, head_dim, generator=g).bfloat16().to(device) for _ in range(2))

    def rotate(t):
        return apply_rotary_pos_emb(t, freqs, config)

    exact = [rotate(t.float()) for t in (q, k)]
    stock = [rotate(t).float() for t in (q, k)]
    ours = [rotate(t.float()).bfloat16().float() for t in (q, k)]

    def scores(pair):  # head 0's attention logits, what the rotation feeds
        return pair[0][:, 0, 0] @ pair[1][:, 0, 0].T

    out = {"seq": seq, "shape": [seq, 1, heads, head_dim]}
    for label, pair in (("bf16 rotation (megatron-core)", stock), ("fp32 rotation, rounded (ours)", ours)):
        out[label] = {"q rel L2": rel_l2(pair[0], exact[0]), "q max abs": (pair[0] - exact[0]).abs().max().item(),
                      "scores rel L2": rel_l2(scores(pair), scores(exact))}
    return out


def rope_model_errors(seq: int = 512) -> dict:
    """Logits of the tiny model in bf16 with and without the fp32 rotation, against the fp32 model."""
    flags = ["--seq-length", str(seq)]
    ref = logits_of(build_session(TINY + flags + ["--use-cpu-initialization"], 1).model[0], seq)
    fp32_rope = build_session(TINY + flags + ["--bf16", "--use-cpu-initialization"], 1).model[0]
    ours = logits_of(fp32_rope, seq)
    for layer in unwrap(fp32_rope).decoder.layers:  # megatron-core's stock spec: q/k stay bf16 through RoPE
        layer.self_attention.q_layernorm = IdentityOp()
        layer.self_attention.k_layernorm = IdentityOp()
    stock = logits_of(fp32_rope, seq)
    return {"seq": seq, "bf16, fp32 rotation (ours)": {"rel L2": rel_l2(ours, ref), "rel max": rel_max(ours, ref)},
            "bf16, bf16 rotation (megatron-core)": {"rel L2": rel_l2(stock, ref), "rel max": rel_max(stock, ref)}}


def loss_checks(tokens: int) -> list[dict]:
    """The chunked loss as training runs it on this device, at Qwen's vocabulary, against torch's in fp64."""
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(tokens, 1, VOCAB, generator=g)).to(compute_device())
    target = torch.randint(0, VOCAB, (tokens, 1), generator=g).to(compute_device())

    def ours(x, t):
        return vocab_parallel_cross_entropy(x, t, parallel_state.get_tensor_model_parallel_group(), on_gpu())

    out = []
    for dtype, grad_tol in ((torch.float32, TOL_LOSS), (torch.bfloat16, TOL_LOSS_GRAD_BF16)):
        e = loss_errors(ours, logits.to(dtype), target)
        name = f"chunked loss vs torch's in fp64, {tokens} tokens x {VOCAB} rows, {str(dtype)[6:]} logits"
        out.append(check(f"{name}: loss", e["loss rel max"], TOL_LOSS, "max abs diff / max abs"))
        out.append(check(f"{name}: logits gradient", e["gradient rel L2"], grad_tol, "relative L2"))
    return out


def backends() -> list[str]:
    """Back ends this machine can run: sdpa and local everywhere, te and flash where installed (GPU)."""
    found = ["local", "sdpa"]
    if on_gpu():
        optional = (("te", "transformer_engine"), ("flash", "flash_attn"))
        found += [b for b, module in optional if importlib.util.find_spec(module)]
    return found


def compare(reference_path: str, out_path: str, quick: bool = False) -> int:
    ref = torch.load(reference_path)
    steps = len(ref["losses"])
    checks = []
    fp32 = {}
    device = compute_device().type
    for backend in ("local", "sdpa"):
        fp32[backend] = run_tiny(["--transformer-impl", backend], steps)
        checks.append(check(f"{device} fp32 {backend} vs CPU fp32 local: logits", rel_max(
            fp32[backend]["logits"], ref["logits"]), TOL_DEVICE_VS_CPU, "max abs diff / max abs"))
        checks.append(check(f"{device} fp32 {backend} vs CPU fp32 local: {steps}-step losses", worst_loss_rel(
            fp32[backend]["losses"], ref["losses"]), TOL_DEVICE_VS_CPU, "worst relative"))
    bf16_local = None
    # each back end, and sdpa with each layer compiled (model/compile.py: inductor's kernels, here Triton's)
    for name, flags in [(b, ["--transformer-impl", b]) for b in backends()] + [
            ("sdpa, compiled layers", ["--transformer-impl", "sdpa", "--compile-layers"])]:
        bf16 = run_tiny([*flags, "--bf16"], steps)
        bf16_local = bf16_local or bf16
        checks.append(check(f"bf16 {name} vs fp32 local: logits", rel_l2(bf16["logits"], fp32["local"]["logits"]),
                            TOL_BF16_LOGITS, "relative L2"))
        checks.append(check(f"bf16 {name} vs fp32 local: {steps}-step losses", worst_loss_rel(
            bf16["losses"], fp32["local"]["losses"]), TOL_BF16_LOSS, "worst relative"))
    for precision in ([], ["--bf16"]):  # fp32["local"] ran with this machine's default kernel: name both here
        fused, plain = (run_tiny(["--transformer-impl", "local", *precision, flag], steps)
                        for flag in ("--fused-adam", "--no-fused-adam"))
        checks.append(check(f"fused AdamW vs foreach, {'bf16' if precision else 'fp32'}: {steps}-step losses",
                            worst_loss_rel(fused["losses"], plain["losses"]), TOL_FUSED_ADAM, "worst relative"))
    megatron_loss = run_tiny(["--transformer-impl", "local", "--bf16", "--no-cross-entropy-fusion"], steps)
    checks.append(check(f"bf16 chunked loss vs megatron-core's loss: {steps}-step losses", worst_loss_rel(
        bf16_local["losses"], megatron_loss["losses"]), TOL_LOSS_VS_MEGATRON, "worst relative"))
    checks += loss_checks(64 if quick else 4096)
    rope_shapes = [(512, 4)] if quick else [(2048, 16), (8192, 16)]
    result = {"device": torch.cuda.get_device_name() if on_gpu() else "cpu", "checks": checks,
              "rope_tensor": [rope_tensor_errors(seq, heads) for seq, heads in rope_shapes],
              "rope_model": rope_model_errors(),
              "reference_losses": ref["losses"], "device_losses_fp32_local": fp32["local"]["losses"]}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    status = print_checks(checks)
    for r in result["rope_tensor"]:
        for label, e in r.items():
            if isinstance(e, dict):
                print(f"RoPE {r['shape']}, {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in e.items()))
    for label, e in result["rope_model"].items():
        if isinstance(e, dict):
            print(f"tiny model logits, seq {result['rope_model']['seq']}, {label} vs fp32: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in e.items()))
    return status


def main() -> int:
    mode, *paths = [a for a in sys.argv[1:] if a != "--quick"]
    if mode == "reference":
        torch.save(run_tiny(["--transformer-impl", "local"], QUICK_STEPS if "--quick" in sys.argv else STEPS), paths[0])
        return 0
    return compare(*paths, quick="--quick" in sys.argv)


if __name__ == "__main__":
    sys.exit(main())
