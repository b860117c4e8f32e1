"""Join indexed-dataset shards into one (megatron-core's IndexedDatasetBuilder.add_index).

    python tools/merge_datasets.py --input data/web_*_text_document --output-prefix data/web_text_document
    python tools/merge_datasets.py --input data/shards/ --output-prefix data/web_text_document

--input takes dataset prefixes (with or without .idx or .bin), globs, or directories (every .idx in them). A
prefix is a dataset even where a directory of the same name exists (training keeps its index cache in
`PREFIX/cache/`).
Shards are joined in sorted order. SFT shards carry a `_loss_mask` companion dataset; it is merged
alongside into OUTPUT_loss_mask. The output is written under temporary names and renamed when whole.
"""

import argparse
import glob
import os
import sys

from megatron_qwen.config.cli import OneLineErrorParser
from megatron_qwen.data.shards import (
    LOSS_MASK_SUFFIX,
    ShardError,
    check_index,
    is_loss_mask,
    loss_mask_prefix,
    merge_datasets,
    output_prefix_problem,
    read_index_counts,
)


class MergeError(ValueError):
    """Inputs that cannot be merged; the message is one line naming the flag or dataset."""


def find_prefixes(specs: list[str]) -> list[str]:
    prefixes = set()
    for spec in specs:
        spec = spec.removesuffix(".idx") if spec.endswith(".idx") else spec.removesuffix(".bin")
        if os.path.isfile(spec + ".idx"):  # before a directory: training's cache is PREFIX/cache/
            found = [spec]
        elif os.path.isdir(spec):
            found = [p[: -len(".idx")] for p in glob.glob(os.path.join(spec, "*.idx"))]
        elif glob.has_magic(spec):
            found = [p[: -len(".idx")] for p in glob.glob(spec + ("" if spec.endswith("*") else ".idx"))
                     if p.endswith(".idx")]
        else:
            found = []
        if not found:
            raise MergeError(f"--input {spec}: no indexed dataset (.idx) found")
        prefixes.update(found)
    # Loss-mask companions are merged alongside their token dataset, not as datasets of their own.
    return sorted(p for p in prefixes if not is_loss_mask(p))


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    args = parser.parse_args(argv)
    if output_prefix_problem(args.output_prefix):
        parser.error(output_prefix_problem(args.output_prefix))
    try:
        prefixes = find_prefixes(args.input)
        if not prefixes:
            raise MergeError("--input names only loss-mask datasets; pass the token datasets")
        out = args.output_prefix
        if out in prefixes:
            raise MergeError(f"--output-prefix {out} is also an input")
        for prefix in prefixes:
            check_index(prefix)  # complete and consistent, before anything is written
        with_mask = [os.path.isfile(loss_mask_prefix(p) + ".idx") for p in prefixes]
        if any(with_mask) and not all(with_mask):
            missing = prefixes[with_mask.index(False)]
            raise MergeError(f"{missing}: has no {LOSS_MASK_SUFFIX} companion while other shards do")
        if all(with_mask):
            merge_datasets([loss_mask_prefix(p) for p in prefixes], loss_mask_prefix(out))
        merge_datasets(prefixes, out)  # token dataset last: its .idx marks the merge complete
        documents, tokens = read_index_counts(out)
    except (MergeError, ShardError, OSError) as e:
        print(f"merge_datasets: error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} shards -> {out}.bin/.idx: {documents:,} documents, {tokens:,} tokens"
          + (f" (+ {loss_mask_prefix(out)})" if all(with_mask) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
