"""Fetch Qwen's qwen.tiktoken once into the cache (idempotent).

The file comes out of the dashscope==2.0.2 wheel (Alibaba's Apache-2.0 redistribution): the
wheel alone is downloaded with pip, one member is extracted and its sha256 verified; dashscope is
never installed or imported.

    python tools/fetch_tokenizer.py                      # into $MEGATRON_QWEN_CACHE or ~/.cache/megatron_qwen
    python tools/fetch_tokenizer.py --wheel dashscope-2.0.2-py3-none-any.whl   # offline
"""

import argparse
import sys

from megatron_qwen.tokenizer.files import TokenizerFileError, default_cache_path, fetch_tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help=f"where to put the file (default {default_cache_path()})")
    parser.add_argument("--wheel", default=None, help="a local dashscope-2.0.2 wheel to read instead of downloading")
    args = parser.parse_args()
    try:
        path, fetched = fetch_tokenizer(args.output, args.wheel)
    except TokenizerFileError as e:
        print(f"fetch_tokenizer: error: {e}", file=sys.stderr)
        return 1
    print(f"{'fetched' if fetched else 'already present'}: {path} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
