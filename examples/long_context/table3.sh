#!/usr/bin/env bash
# Table 3 of the Qwen report (report section 2.5, docs/qwen.md section 7) reproduced on a small Qwen trained
# here (docs/long_context.md, which also says how long it takes): data (prepare.py), training at 128 tokens
# until the validation loss flattens, then perplexity at 1x-16x the training length with each technique.
#   bash examples/long_context/table3.sh [OUT_DIR]      (default runs/long_context)
# The table goes to examples/long_context/table3.md, which docs/long_context.md quotes (tests check it):
# commit it with the docs after any change of the numerics.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs/long_context}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

python examples/long_context/prepare.py --out "$R" --vocab 8192
# 4 layers, hidden 128, 8192 ids (--tokenizer-type NullTokenizer: the shards hold renumbered ids)
python -m megatron_qwen.pretrain --model-size tiny-qwen-vocab --vocab-size 8192 --tokenizer-type NullTokenizer \
  --data-path "$R/data/train" --split 98,2,0 --seq-length 128 --micro-batch-size 32 --global-batch-size 32 \
  --train-iters 700 --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 40 --log-interval 10 --eval-interval 50 \
  --eval-iters 8 --data-cache-path "$R/cache" --save "$R/ckpt" --load "$R/ckpt" --save-interval 100 \
  --metrics-file "$R/metrics.jsonl"
python tools/eval_long_context.py --load "$R/ckpt" --data-path "$R/data/heldout" \
  --lengths 128 256 512 1024 2048 --eval-tokens 32768 --chunk 1024 \
  --output "$R/table3.png" --json "$R/table3.json"
python examples/long_context/markdown_table.py "$R/table3.json" > "$R/table3.md"
cp "$R/table3.md" examples/long_context/table3.md
