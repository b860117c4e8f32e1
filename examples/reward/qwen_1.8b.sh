#!/usr/bin/env bash
# Qwen-1.8B reward model on comparison pairs (report section 3.2.1, docs/qwen.md section 11, docs/reward.md).
# Two stages, each a run of this script: PMP from a language model (BASE_CHECKPOINT: a base or SFT --save dir;
# the head starts fresh), then fine-tuning from the PMP run (BASE_CHECKPOINT: its --save dir), each on its own
# pairs and in its own CHECKPOINT_DIR. Constant LR 3e-6 and one epoch are the recipe's defaults: docs/launching.md.
#   BASE_CHECKPOINT=<start --save dir> DATA_PATH=<pair shards (preprocess_data.py --pairs)> CHECKPOINT_DIR=... \
#       bash examples/reward/qwen_1.8b.sh          (one node)
#       sbatch --nodes=1 examples/reward/qwen_1.8b.sh   (slurm; CONTAINER_IMAGE or APPTAINER_IMAGE for a container)
#SBATCH --job-name=qwen1_8b-reward
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
    # 64 pairs per step: 128 sequences, each padded to 2048; micro-batch 4 (two pairs).
    --seq-length 2048 --micro-batch-size 4 --global-batch-size 128
)
launch megatron_qwen.reward "${FLAGS[@]}"
