#!/usr/bin/env bash
# Code-Qwen-14B: continued pretraining of the base model on code (report section 4.1, docs/qwen.md section 5:
# ~90B tokens; context, LR and schedule are the recipe's defaults for 14b: docs/launching.md).
#   BASE_CHECKPOINT=<base --save dir> DATA_PATH=<code shards> CHECKPOINT_DIR=... \
#       bash examples/pretrain_code/qwen_14b.sh          (one node)
#       sbatch --nodes=16 examples/pretrain_code/qwen_14b.sh   (slurm; CONTAINER_IMAGE or APPTAINER_IMAGE for a container)
#SBATCH --job-name=qwen14b-code
#SBATCH --nodes=16
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
    # TP4 x CP2 = one model replica per node: 4096 tokens of each sequence per GPU, activations
    # split again by sequence parallel. On a single node data parallel is 1, so the distributed
    # optimizer cannot shard the optimizer state (~43 GB per GPU); there add
    # EXTRA_ARGS="--recompute-granularity full" for headroom, or use more nodes.
    --tensor-model-parallel-size 4 --context-parallel-size 2 --sequence-parallel
    # Still 4M tokens per step: 512 sequences of 8192.
    --seq-length 8192 --micro-batch-size 1 --global-batch-size 512
    # The report's ~90B tokens of code (warmup: 3% of them).
    --train-tokens 9e10
)
launch megatron_qwen.pretrain_code "${FLAGS[@]}"
