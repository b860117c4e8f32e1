#!/usr/bin/env bash
# Qwen-7B base pretraining (report section 2, Table 1; docs/qwen.md section 3):
# 2.4T tokens in 4M-token batches; the LR schedule is the recipe's default (docs/launching.md).
#   one 8-GPU node:  DATA_PATH=... CHECKPOINT_DIR=... bash examples/pretrain/qwen_7b.sh
#   slurm:           DATA_PATH=... CHECKPOINT_DIR=... sbatch --nodes=16 examples/pretrain/qwen_7b.sh
#   in a container:  CONTAINER_IMAGE=... (pyxis) or APPTAINER_IMAGE=... (Apptainer) before sbatch
#SBATCH --job-name=qwen7b-pretrain
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@240
# The warning 240 s before the time limit leaves the run time to save a 7B checkpoint and exit;
# unfinished, it requeues itself and resumes (docs/launching.md, "Time limits, preemption and requeue").
# Find examples/launch.sh next to this file or, under sbatch (which runs a copy of this file),
# in the directory the job was submitted from.
for d in "${MEGATRON_QWEN_ROOT:-}" "$(dirname "$0")/../.." "${SLURM_SUBMIT_DIR:-}"; do [[ -f "$d/examples/launch.sh" ]] && break; done
# shellcheck source=examples/launch.sh
source "$d/examples/launch.sh" || { echo "cannot find examples/launch.sh: submit from the repository root or set MEGATRON_QWEN_ROOT" >&2; exit 1; }

FLAGS=(
    --model-size 7b
    # TP2 inside a node (Megatron-LM's 7B layout): 32 heads split 16/16, tensor-parallel traffic
    # stays on NVLink; data parallel = 4 per node. Sequence parallel shards the layer norms' and
    # dropouts' activations over the TP pair. (TP1 with the distributed optimizer also fits in
    # 80 GB at seq 2048, but with little headroom.)
    --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 --sequence-parallel
    # 4M tokens per step = 2048 sequences of 2048; micro-batch 2 per GPU, the rest is
    # gradient accumulation (2048 / (2 x DP) micro-batches).
    --seq-length 2048 --micro-batch-size 2 --global-batch-size 2048
    # The report's budget, 2.4T tokens: --train-tokens / (2048 x 2048) steps; warmup and decay counted in
    # the same unit (docs/launching.md, "Budgets").
    --train-tokens 2.4e12
)
launch megatron_qwen.pretrain "${FLAGS[@]}"
