#!/usr/bin/env bash
# Qwen-14B base pretraining (report section 2, Table 1; docs/qwen.md section 3):
# 3.0T tokens in 4M-token batches; the LR schedule is the recipe's default (docs/launching.md).
#   one 8-GPU node:  DATA_PATH=... CHECKPOINT_DIR=... bash examples/pretrain/qwen_14b.sh
#   slurm:           DATA_PATH=... CHECKPOINT_DIR=... sbatch --nodes=32 examples/pretrain/qwen_14b.sh
#   in a container:  CONTAINER_IMAGE=... (pyxis) or APPTAINER_IMAGE=... (Apptainer) before sbatch
#SBATCH --job-name=qwen14b-pretrain
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@360
# The warning 360 s before the time limit leaves the run time to save a 14B checkpoint and exit;
# unfinished, it requeues itself and resumes (docs/launching.md, "Time limits, preemption and requeue").
# Find examples/launch.sh next to this file or, under sbatch (which runs a copy of this file),
# in the directory the job was submitted from.
for d in "${MEGATRON_QWEN_ROOT:-}" "$(dirname "$0")/../.." "${SLURM_SUBMIT_DIR:-}"; do [[ -f "$d/examples/launch.sh" ]] && break; done
# shellcheck source=examples/launch.sh
source "$d/examples/launch.sh" || { echo "cannot find examples/launch.sh: submit from the repository root or set MEGATRON_QWEN_ROOT" >&2; exit 1; }

FLAGS=(
    --model-size 14b
    # TP4 inside a node (Megatron-LM's layout for its 16B): 40 heads split 10 per GPU, 3.5B
    # parameters per GPU; data parallel = 2 per node. Alternative with less TP traffic:
    # --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 (20 layers per stage).
    --tensor-model-parallel-size 4 --pipeline-model-parallel-size 1 --sequence-parallel
    # 4M tokens per step = 2048 sequences of 2048, micro-batch 1 per GPU.
    --seq-length 2048 --micro-batch-size 1 --global-batch-size 2048
    # The report's budget, 3.0T tokens: --train-tokens / (2048 x 2048) steps; warmup and decay counted in
    # the same unit (docs/launching.md, "Budgets").
    --train-tokens 3.0e12
)
launch megatron_qwen.pretrain "${FLAGS[@]}"
