"""Join indexed-dataset shards into one (megatron-core's IndexedDatasetBuilder.add_index).

    python tools/merge_datasets.py --input data/web_*_text_document --output-prefix data/web_text_document
    python tools/merge_datasets.py --input data/shards/ --output-prefix data/web_text_document

--input takes dataset prefixes (with or without .idx), globs, or directories (every .idx in them).
Shards are joined in sorted order. SFT shards carry a `_loss_mask` companion dataset; it is merged
alongside into OUTPUT_loss_mask. The output is written under temporary names and renamed when whole.
"""

import argparse
import glob
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

from megatron_qwen.data.indexed_writer import is_complete, merge_datasets, read_index_counts  # noqa: E402
from megatron_qwen.data.preprocess import LOSS_MASK_SUFFIX  # noqa: E402


class MergeError(ValueError):
    pass


def find_prefixes(specs: list[str]) -> list[str]:
    prefixes = set()
    for spec in specs:
        spec = spec[: -len(".idx")] if spec.endswith(".idx") else spec
        if os.path.isdir(spec):
            found = [p[: -len(".idx")] for p in glob.glob(os.path.join(spec, "*.idx"))]
        elif glob.has_magic(spec):
            found = [p[: -len(".idx")] for p in glob.glob(spec + ("" if spec.endswith("*") else ".idx"))
                     if p.endswith(".idx")]
        else:
            found = [spec] if os.path.isfile(spec + ".idx") else []
        if not found:
            raise MergeError(f"--input {spec}: no indexed dataset (.idx) found")
        prefixes.update(found)
    # Loss-mask companions are merged alongside their token dataset, not as datasets of their own.
    return sorted(p for p in prefixes if not p.endswith(LOSS_MASK_SUFFIX))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="prefix of the merged dataset")
    args = parser.parse_args(argv)
    try:
        prefixes = find_prefixes(args.input)
        if not prefixes:
            raise MergeError("--input names only loss-mask datasets; pass the token datasets")
        out = args.output_prefix
        if out in prefixes:
            raise MergeError(f"--output-prefix {out} is also an input")
        for prefix in prefixes:
            if not is_complete(prefix):
                raise MergeError(f"{prefix}: incomplete or corrupt (.bin size does not match .idx); rerun preprocessing")
        with_mask = [is_complete(p + LOSS_MASK_SUFFIX) for p in prefixes]
        if any(with_mask) and not all(with_mask):
            missing = prefixes[with_mask.index(False)]
            raise MergeError(f"{missing}: has no {LOSS_MASK_SUFFIX} companion while other shards do")
        if all(with_mask):
            merge_datasets([p + LOSS_MASK_SUFFIX for p in prefixes], out + LOSS_MASK_SUFFIX)
        merge_datasets(prefixes, out)  # token dataset last: its .idx marks the merge complete
        documents, tokens = read_index_counts(out)
    except (MergeError, ValueError, OSError) as e:
        print(f"merge_datasets: error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} shards -> {out}.bin/.idx: {documents:,} documents, {tokens:,} tokens"
          + (f" (+ {out}{LOSS_MASK_SUFFIX})" if all(with_mask) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
