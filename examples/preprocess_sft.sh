#!/usr/bin/env bash
# Tokenize ChatML conversations ({"messages": [{"role", "content"}, ...]} per line) for SFT.
# Usage: examples/preprocess_sft.sh INPUT OUTPUT_PREFIX
# Writes OUTPUT_PREFIX_messages_document.{bin,idx} (tokens) and
#        OUTPUT_PREFIX_messages_document_loss_mask.{bin,idx} (1 = trained target), same documents.
# Train with --data-path OUTPUT_PREFIX_messages_document.
set -euo pipefail
INPUT=${1:?input file, folder or glob}
OUTPUT_PREFIX=${2:?output prefix}
cd "$(dirname "$0")/.."

python tools/fetch_tokenizer.py
python tools/preprocess_data.py --input "$INPUT" --output-prefix "$OUTPUT_PREFIX" --chatml
