#!/usr/bin/env bash
# Code-Qwen-14B-Chat: SFT of Code-Qwen on ChatML conversations, in stages (report section 4.2,
# docs/qwen.md section 5; LR, the warmup over 3% of the steps on a cosine and the rest are the recipe's
# defaults: docs/launching.md). Stage 1 starts from Code-Qwen's --save directory; each later stage from the
# stage before it, on its own data and in its own CHECKPOINT_DIR.
#   BASE_CHECKPOINT=<Code-Qwen, or the previous stage's, --save dir> DATA_PATH=<this stage's ChatML shards> \
#   CHECKPOINT_DIR=<this stage's dir> bash examples/sft_code/qwen_14b.sh     (one node)
#       sbatch --nodes=2 examples/sft_code/qwen_14b.sh   (slurm; CONTAINER_IMAGE or APPTAINER_IMAGE for a container)
#SBATCH --job-name=qwen14b-code-sft
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
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
    # Same TP4 layout as pretraining; data parallel = 2 per node.
    --tensor-model-parallel-size 4 --sequence-parallel
    # 128 conversations per step, each padded to 2048 (GPU back ends pad SFT samples), micro-batch 2; up to 16 nodes.
    --seq-length 2048 --micro-batch-size 2 --global-batch-size 128
)
launch megatron_qwen.sft_code "${FLAGS[@]}"
