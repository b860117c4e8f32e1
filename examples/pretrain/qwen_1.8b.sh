#!/usr/bin/env bash
# Qwen-1.8B base pretraining (report section 2, Table 1; docs/qwen.md section 3):
# 2.2T tokens in 4M-token batches; the LR schedule is the recipe's default (docs/launching.md).
#   one 8-GPU node:  DATA_PATH=... CHECKPOINT_DIR=... bash examples/pretrain/qwen_1.8b.sh
#   slurm:           DATA_PATH=... CHECKPOINT_DIR=... sbatch --nodes=8 examples/pretrain/qwen_1.8b.sh
#   in a container:  CONTAINER_IMAGE=... (pyxis) or APPTAINER_IMAGE=... (Apptainer) before sbatch
#SBATCH --job-name=qwen1_8b-pretrain
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
# The warning 180 s before the time limit leaves the run time to save a 1.8B checkpoint and exit;
# unfinished, it requeues itself and resumes (docs/launching.md, "Time limits, preemption and requeue").
# Find examples/launch.sh next to this file or, under sbatch (which runs a copy of this file),
# in the directory the job was submitted from.
for d in "${MEGATRON_QWEN_ROOT:-}" "$(dirname "$0")/../.." "${SLURM_SUBMIT_DIR:-}"; do [[ -f "$d/examples/launch.sh" ]] && break; done
# shellcheck source=examples/launch.sh
source "$d/examples/launch.sh" || { echo "cannot find examples/launch.sh: submit from the repository root or set MEGATRON_QWEN_ROOT" >&2; exit 1; }

FLAGS=(
    --model-size 1.8b
    # 1.8B fits on one GPU with its optimizer state sharded: data parallel only, 8 per node, and a
    # micro-batch of 4 (the measured layout of docs/PERFORMANCE.md).
    --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1
    # 4M tokens per step = 2048 sequences of 2048; the rest of the batch is gradient accumulation.
    --seq-length 2048 --micro-batch-size 4 --global-batch-size 2048
    # The report's budget, 2.2T tokens: --train-tokens / (2048 x 2048) steps; warmup and decay counted in
    # the same unit (docs/launching.md, "Budgets").
    --train-tokens 2.2e12
)
launch megatron_qwen.pretrain "${FLAGS[@]}"
