#!/usr/bin/env bash
# Shared launcher for the job scripts in examples/<job>/qwen_<size>.sh.
#
# A job script sets its flags (model, parallel layout, batch) and calls
#     launch MODULE FLAG...
# which adds the flags every job shares (data, checkpoints, logging, bf16, ZeRO-1) from the
# environment and starts torchrun:
#   - run with bash on one node:  torchrun on this node, GPUS_PER_NODE (default 8) processes;
#   - submitted with sbatch:      srun starts this file once per node, and each node's torchrun
#                                 takes its rank, the node count and the master address from slurm.
# DRY_RUN=1 prints the torchrun command instead of running it.
#
# Environment (see docs/launching.md):
#   DATA_PATH         required: shard prefixes, optionally weighted ("0.7 /data/web 0.3 /data/code")
#   CHECKPOINT_DIR    required: --save directory; a job restarted on it resumes from its latest checkpoint
#   BASE_CHECKPOINT   required by continued pretraining and SFT: the --save directory to start from
#   TOKENIZER_MODEL   qwen.tiktoken (default: the copy tools/fetch_tokenizer.py cached)
#   LOG_DIR           metrics JSONL and tensorboard (default $CHECKPOINT_DIR/logs)
#   DATA_CACHE_PATH   dataset index cache on a shared filesystem (default $CHECKPOINT_DIR/data_cache)
#   WANDB_PROJECT     also log to wandb
#   SAVE_INTERVAL     iterations between checkpoints (default 1000)
#   GPUS_PER_NODE     default $SLURM_GPUS_ON_NODE, else 8
#   MASTER_PORT       default 29500 on one node; under slurm 20000 + job id % 10000
#   EXTRA_ARGS        appended last, so they override any flag ("--train-iters 100 --exit-interval 50")
#   EXIT_DURATION_MINS  save and exit this many minutes after start (--exit-duration-in-mins): set it below
#                     the slurm time limit; under slurm an unfinished run then requeues its job and resumes

set -euo pipefail

MQ_LAUNCHER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/launch.sh"

die() {
    echo "launch: error: $*" >&2
    exit 1
}

require_env() {  # NAME "what it is"
    [[ -n "${!1:-}" ]] || die "$1 is not set; export $1=<$2> (see docs/launching.md)"
}

has_checkpoint() {
    [[ -f "$1/latest_checkpointed_iteration.txt" ]]
}

# --- the flags every job shares -------------------------------------------------------------
common_flags() {  # MODULE
    require_env DATA_PATH "shard prefix(es) written by tools/preprocess_data.py"
    require_env CHECKPOINT_DIR "directory to save checkpoints in"
    local log_dir="${LOG_DIR:-$CHECKPOINT_DIR/logs}"
    local -a data_path
    read -r -a data_path <<< "$DATA_PATH"  # a blend is several words: weight prefix weight prefix
    COMMON=(
        --data-path "${data_path[@]}"
        --data-cache-path "${DATA_CACHE_PATH:-$CHECKPOINT_DIR/data_cache}"
        --save "$CHECKPOINT_DIR" --save-interval "${SAVE_INTERVAL:-1000}"
        --log-interval 10 --eval-interval 1000 --eval-iters 10
        --metrics-file "$log_dir/metrics.jsonl" --tensorboard-dir "$log_dir/tensorboard"
        # bf16 with fp32 master weights; the fp32 optimizer state (12 bytes per parameter, ~93 GB
        # for 7B) sharded over the data-parallel ranks (ZeRO-1) so that it fits beside the model.
        --bf16 --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather
        # slurm sends SIGTERM before a time limit or preemption: save, exit, resume on requeue.
        --exit-signal-handler
    )
    [[ -n "${TOKENIZER_MODEL:-}" ]] && COMMON+=(--tokenizer-model "$TOKENIZER_MODEL")
    [[ -n "${EXIT_DURATION_MINS:-}" ]] && COMMON+=(--exit-duration-in-mins "$EXIT_DURATION_MINS")
    [[ -n "${WANDB_PROJECT:-}" ]] && COMMON+=(--wandb-project "$WANDB_PROJECT" --wandb-save-dir "$log_dir")
    if [[ "$1" == megatron_qwen.pretrain ]]; then
        COMMON+=(--load "$CHECKPOINT_DIR")  # resumes if there is a checkpoint, else starts fresh
    elif has_checkpoint "$CHECKPOINT_DIR"; then
        COMMON+=(--load "$CHECKPOINT_DIR" --no-finetune)  # restarted: resume this run exactly
    else
        require_env BASE_CHECKPOINT "the --save directory of the checkpoint to start from"
        has_checkpoint "$BASE_CHECKPOINT" || die "BASE_CHECKPOINT=$BASE_CHECKPOINT holds no checkpoint " \
            "(no latest_checkpointed_iteration.txt); point it at a --save directory"
        COMMON+=(--load "$BASE_CHECKPOINT")  # the recipe loads weights only (--finetune)
    fi
}

# --- where this node stands ------------------------------------------------------------------
node_flags() {
    local gpus="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
        [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NNODES:-}" && -n "${SLURM_NODEID:-}" ]] ||
            die "inside slurm job $SLURM_JOB_ID but SLURM_JOB_NODELIST, SLURM_NNODES or SLURM_NODEID is unset"
        local master
        master="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
        master="${master%%$'\n'*}"  # the first host
        [[ -n "$master" ]] || die "scontrol show hostnames '$SLURM_JOB_NODELIST' printed no host"
        # Derived from the job id: every node computes the same port, and two jobs sharing a
        # node rarely collide. Below 32768, out of Linux's ephemeral port range.
        NODE=(--nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "$gpus"
              --master_addr "$master" --master_port "${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}")
    else
        NODE=(--nnodes 1 --node_rank 0 --nproc_per_node "$gpus"
              --master_addr localhost --master_port "${MASTER_PORT:-29500}")
    fi
}

# --- requeue an unfinished slurm job -----------------------------------------------------------
requeue_if_unfinished() {  # FLAG...: after a clean exit before --train-iters (--exit-duration-in-mins)
    local train_iters="" previous="" arg done_iters=0
    for arg in "$@"; do  # the last --train-iters wins, as in argparse
        [[ "$previous" == --train-iters ]] && train_iters="$arg"
        previous="$arg"
    done
    has_checkpoint "$CHECKPOINT_DIR" && done_iters="$(<"$CHECKPOINT_DIR/latest_checkpointed_iteration.txt")"
    if [[ -n "$train_iters" && "$done_iters" -lt "$train_iters" ]]; then
        echo "launch: stopped at iteration $done_iters of $train_iters; requeueing slurm job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"  # the job starts again with the same command and resumes
    fi
}

# --- launch ----------------------------------------------------------------------------------
launch() {  # MODULE FLAG...
    local module="$1"
    shift
    if [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" ]]; then
        # The batch script runs on the first node only: start one launcher per node. (Not this
        # job script itself: sbatch runs a private copy that the other nodes cannot see.)
        exec srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
            bash "$MQ_LAUNCHER" "$module" "$@"
    fi
    common_flags "$module"
    node_flags
    # Megatron's tensor/sequence-parallel communication overlap needs ordered CUDA streams.
    export CUDA_DEVICE_MAX_CONNECTIONS=1
    local -a extra
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    # The job's own flags come after the shared ones, and EXTRA_ARGS last: the last occurrence wins.
    local -a cmd=("${TORCHRUN:-torchrun}" "${NODE[@]}" -m "$module" "${COMMON[@]}" "$@" "${extra[@]}")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"
        echo
    elif [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NODEID:-0}" == 0 ]]; then
        "${cmd[@]}"  # a failed run stops here (set -e): only a clean early exit is requeued
        requeue_if_unfinished "${cmd[@]}"
    else
        exec "${cmd[@]}"
    fi
}

# Executed (by srun on every node) rather than sourced: launch the given module and flags.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    [[ $# -ge 1 ]] || die "usage: launch.sh MODULE FLAG... (normally called from a job script)"
    launch "$@"
fi
