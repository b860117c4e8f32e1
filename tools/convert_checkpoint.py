"""Convert between Qwen's Hugging Face checkpoints and ours (docs/checkpoints.md).

    python tools/convert_checkpoint.py --load-dir /models/Qwen-7B --save-dir ckpt/qwen-7b
    python tools/convert_checkpoint.py --load-dir runs/7b/ckpt --save-dir hf/qwen-7b --hf-layout qwen2 --dtype bf16
    python tools/convert_checkpoint.py --load-dir /models/Qwen-7B --save-dir hf/qwen-7b-qwen2 --hf-layout qwen2

The direction comes from --load-dir. A directory with config.json is a Hugging Face model
(Qwen-1's QWenLMHeadModel or transformers' Qwen2ForCausalLM; safetensors or pytorch_model.bin,
single or sharded): it becomes a checkpoint of ours that every job --loads at any TP/PP layout,
as weights only; with --hf-layout it becomes a Hugging Face model of that layout instead, renamed
tensor by tensor (no process group, no model; docs/checkpoints.md). A checkpoint of the deepspeed
engine (--zero-engine deepspeed, any ZeRO stage and TP x DP layout; docs/zero.md) becomes one of
ours the same way, from its fp32 master weights.
Any other checkpoint is ours or Megatron-LM's (torch_dist, saved at any layout; the kinds and what
each conversion takes: docs/checkpoints.md): its latest checkpoint becomes a Hugging Face model in
--hf-layout qwen (Qwen-1 names, as published) or qwen2 (loads in transformers without remote code). A checkpoint is
checked before it is read (sizes, checksums, no pickled code: docs/reliability.md). Output is written
under a temporary name and renamed when whole, with the user's file mode; an existing --save-dir is
never overwritten, and what a killed conversion left is removed.
"""

import argparse
import resource
import sys
import time

from megatron_qwen.checkpointing.deepspeed_format import convert_to_megatron
from megatron_qwen.checkpointing.resolver import HF_KINDS, Kind, Use, resolve
from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.config.errors import ConfigError
from megatron_qwen.hf.files import parse_size
from megatron_qwen.hf.layouts import check_layout
from megatron_qwen.hf.relayout import relayout_hf
from megatron_qwen.hf.source import open_hf
from megatron_qwen.platform.notices import silence_megatron_notices
from megatron_qwen.tokenizer.files import TokenizerFileError, add_unpublished_flag, check_published


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="tools/convert_checkpoint.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load-dir", required=True, help="a Hugging Face model directory, or a --save directory of ours")
    p.add_argument("--save-dir", required=True, help="where to write the converted checkpoint (must not exist)")
    p.add_argument("--hf-layout", default=None,
                   help="to Hugging Face: qwen (Qwen-1 QWenLMHeadModel names) or qwen2 (Qwen2ForCausalLM); from a "
                        "Hugging Face --load-dir, the layout to rewrite it in")
    p.add_argument("--dtype", default=None,
                   help="bf16, fp16 or fp32 (default: as stored; into ours bf16 or fp32, fp16 widening to fp32)")
    p.add_argument("--max-shard-size", default="5GB", help="to Hugging Face: largest safetensors file (5GB = 5e9 B)")
    p.add_argument("--tokenizer-model", default=None,
                   help="to Hugging Face: the qwen.tiktoken to copy (default: the verified fetched copy)")
    add_unpublished_flag(p)
    p.add_argument("--chat", action="store_true", default=None,
                   help="to Hugging Face: Qwen-7B-Chat's generation settings (default: when the run trained on "
                        "ChatML, or a Hugging Face source's generation_config.json says chat_format chatml)")
    return p


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def convert(args) -> str:
    """Run the conversion ``args`` asks for; returns a one-line summary."""
    if args.dtype is not None and args.dtype not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"--dtype {args.dtype} is unknown; choose bf16, fp16 or fp32")
    to_hf = args.hf_layout is not None
    source = resolve(args.load_dir).check_for(Use.EXPORT if to_hf else Use.CONVERT, flag="--load-dir")
    src = source.path
    if source.kind in HF_KINDS and to_hf:
        files = relayout_hf(src, args.save_dir, check_layout(args.hf_layout), args.dtype,
                            parse_size(args.max_shard_size), args.tokenizer_model, args.chat)
        return f"Hugging Face -> Hugging Face ({args.hf_layout}): {args.save_dir}: {', '.join(files)}"
    if source.kind in HF_KINDS:
        cfg, layout, _ = open_hf(source, "--load-dir")  # every name and shape checked before megatron-core is imported
        # deferred: megatron-core takes seconds to import; the input is checked before
        from megatron_qwen.hf.load import import_hf

        ckpt = import_hf(src, args.save_dir, args.dtype)
        return (f"Hugging Face ({layout}) -> ours: {ckpt}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
                f"{cfg.padded_vocab_size} vocabulary rows")
    if source.kind is Kind.DEEPSPEED:
        if args.dtype is not None:
            raise ConfigError(f"--load-dir {src} is a DeepSpeed-engine checkpoint, converted into ours from its fp32 "
                              "master weights: drop --dtype (pass it to the export of the result)")

        ckpt = convert_to_megatron(source, args.save_dir)
        return f"DeepSpeed ZeRO -> ours: {ckpt} (fp32 master weights, loadable at any layout as weights only)"
    check_layout(args.hf_layout)  # ours (a run's, or weights converted into ours) to Hugging Face
    max_shard = parse_size(args.max_shard_size)
    check_published(args.tokenizer_model, args.allow_unpublished_tokenizer)
    # deferred: megatron-core takes seconds to import; the input is checked before
    from megatron_qwen.hf.export import export_hf

    files = export_hf(src, args.save_dir, args.hf_layout, args.dtype, max_shard, args.tokenizer_model, args.chat)
    return f"ours -> Hugging Face ({args.hf_layout}): {args.save_dir}: {', '.join(files)}"


def main(argv: list[str] | None = None) -> int:
    silence_megatron_notices()
    args = build_parser().parse_args(argv)
    start = time.monotonic()
    try:
        summary = convert(args)
    except (ConfigError, TokenizerFileError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{summary} ({time.monotonic() - start:.1f} s, peak RSS {_peak_rss_gib():.2f} GiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
