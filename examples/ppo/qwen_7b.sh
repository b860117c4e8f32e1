#!/usr/bin/env bash
# Qwen-7B PPO (report section 3.2.2, docs/qwen.md section 12, docs/ppo.md): the policy from an SFT run
# (BASE_CHECKPOINT), the value model from a reward run (REWARD_CHECKPOINT), responses to PROMPT_DATA's prompts;
# DATA_PATH's pretraining shards feed the pretraining-gradient term once --ptx-coef is set (EXTRA_ARGS). The
# report's settings are the recipe's defaults: docs/launching.md. The layout below is not yet measured on GPUs.
#   BASE_CHECKPOINT=<SFT --save dir> REWARD_CHECKPOINT=<reward --save dir> PROMPT_DATA=<prompts.jsonl> \
#   DATA_PATH=<pretraining shards> CHECKPOINT_DIR=... bash examples/ppo/qwen_7b.sh          (one node)
#       sbatch --nodes=2 examples/ppo/qwen_7b.sh   (slurm; CONTAINER_IMAGE or APPTAINER_IMAGE for a container)
#SBATCH --job-name=qwen7b-ppo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@240
# The warning before the time limit leaves the run time to save both trained models and exit; unfinished, it
# requeues itself and resumes (docs/launching.md, "Time limits, preemption and requeue").
# Find examples/launch.sh next to this file or, under sbatch (which runs a copy of this file),
# in the directory the job was submitted from.
for d in "${MEGATRON_QWEN_ROOT:-}" "$(dirname "$0")/../.." "${SLURM_SUBMIT_DIR:-}"; do [[ -f "$d/examples/launch.sh" ]] && break; done
# shellcheck source=examples/launch.sh
source "$d/examples/launch.sh" || { echo "cannot find examples/launch.sh: submit from the repository root or set MEGATRON_QWEN_ROOT" >&2; exit 1; }
require_env REWARD_CHECKPOINT "the --save directory of the reward model (python -m megatron_qwen.reward)"
require_env PROMPT_DATA "a JSONL file of prompts (docs/ppo.md)"

FLAGS=(
    --model-size 7b
    # TP2 as the reward model (without sequence parallelism, which PPO's rollouts do not run); data parallel = 4 per node.
    --tensor-model-parallel-size 2
    --reward-model "$REWARD_CHECKPOINT" --prompt-data-path "$PROMPT_DATA"
)
launch megatron_qwen.ppo "${FLAGS[@]}"
