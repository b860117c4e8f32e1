#!/usr/bin/env bash
# Tokenize a pretraining corpus on one machine: one shard per input file, all cores busy.
# Usage: examples/preprocess_pretrain.sh INPUT_DIR OUTPUT_PREFIX [WORKERS (default: one per CPU)]
#   INPUT_DIR      folder (searched recursively) of .jsonl / .jsonl.gz / .jsonl.zst / .parquet files
#   OUTPUT_PREFIX  e.g. data/web -> data/web_<file>_text_document.{bin,idx}
# Rerunning skips finished shards. Train on the shards directly (list them in --data-path) or
# merge them (the last lines; a single input file is already OUTPUT_PREFIX_text_document).
set -euo pipefail
INPUT_DIR=${1:?input folder}
OUTPUT_PREFIX=${2:?output prefix}
WORKERS=${3:-$(nproc)}
cd "$(dirname "$0")/.."

python tools/fetch_tokenizer.py  # once; a no-op when the verified file is cached
python tools/preprocess_data.py \
    --input "$INPUT_DIR" \
    --output-prefix "$OUTPUT_PREFIX" \
    --json-keys text \
    --append-eod \
    --workers "$WORKERS"
shopt -s nullglob
shards=("${OUTPUT_PREFIX}"_*_text_document.idx)
if (( ${#shards[@]} > 1 )); then
    python tools/merge_datasets.py --input "${OUTPUT_PREFIX}_*_text_document" --output-prefix "${OUTPUT_PREFIX}_text_document"
fi
