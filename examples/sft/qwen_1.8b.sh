#!/usr/bin/env bash
# Qwen-1.8B-Chat SFT on ChatML conversations (report section 3.1, docs/qwen.md section 4;
# sequence, batch, steps, LR schedule and dropout are the recipe's defaults: docs/launching.md).
#   BASE_CHECKPOINT=<base --save dir> DATA_PATH=<ChatML shards (preprocess_data.py --chatml)> CHECKPOINT_DIR=... \
#       bash examples/sft/qwen_1.8b.sh          (one node)
#       sbatch --nodes=1 examples/sft/qwen_1.8b.sh   (slurm; CONTAINER_IMAGE or APPTAINER_IMAGE for a container)
#SBATCH --job-name=qwen1_8b-sft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
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
    # One GPU per model replica: data parallel = 8 per node.
    --tensor-model-parallel-size 1
    # 128 conversations per step, each padded to 2048 (GPU back ends pad SFT samples), micro-batch 4; up to 4 nodes.
    --seq-length 2048 --micro-batch-size 4 --global-batch-size 128
)
launch megatron_qwen.sft "${FLAGS[@]}"
