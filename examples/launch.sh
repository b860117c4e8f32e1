#!/usr/bin/env bash
# Shared launcher for the job scripts in examples/<job>/qwen_<size>.sh.
#
# A job script sets its flags (model, parallel layout, batch) and calls
#     launch MODULE FLAG...
# which adds the flags every job shares (data, checkpoints, logging, bf16, ZeRO-1) from the
# environment and starts torchrun:
#   - run with bash on one node:  torchrun on this node, GPUS_PER_NODE (default 8) processes;
#   - submitted with sbatch:      the batch script starts this file once per node with srun, on the host
#                                 or in a container (pyxis/enroot or Apptainer), and each node's torchrun
#                                 takes its rank, the node count and the master address from slurm. The
#                                 batch script forwards slurm's warning signal (#SBATCH --signal=B:USR1@S) to
#                                 the training processes, which save and exit, and requeues an unfinished run.
# DRY_RUN=1 prints the srun and torchrun commands instead of running them.
#
# Environment (see docs/launching.md):
#   DATA_PATH         required: shard prefixes, optionally weighted ("0.7 /data/web 0.3 /data/code")
#   CHECKPOINT_DIR    required: --save directory; a job restarted on it resumes from its latest checkpoint
#   BASE_CHECKPOINT   required by continued pretraining and SFT: the --save directory to start from
#   TOKENIZER_MODEL   qwen.tiktoken (default: the copy tools/fetch_tokenizer.py cached, or the image's)
#   LOG_DIR           metrics JSONL and tensorboard (default $CHECKPOINT_DIR/logs)
#   DATA_CACHE_PATH   dataset index cache on a shared filesystem (default $CHECKPOINT_DIR/data_cache)
#   WANDB_PROJECT     also log to wandb
#   SAVE_INTERVAL     iterations between checkpoints (default 1000)
#   GPUS_PER_NODE     default $SLURM_GPUS_ON_NODE, else 8
#   MASTER_PORT       default 29500 on one node; under slurm 20000 + job id % 10000
#   EXTRA_ARGS        appended last, so they override any flag ("--train-iters 100 --exit-interval 50")
#   EXIT_DURATION_MINS  save and exit this many minutes after start (--exit-duration-in-mins); under slurm an
#                     unfinished run then requeues its job and resumes
#   CONTAINER_IMAGE   slurm with pyxis/enroot: run every node's launcher in this image (srun --container-image)
#   APPTAINER_IMAGE   slurm with Apptainer: run every node's launcher with `apptainer exec --nv` of this image
#   CONTAINER_MOUNTS  host:container[,host:container...] directories the job reads or writes (data, checkpoints);
#                     the repository and CHECKPOINT_DIR are added at their own paths
#   NCCL_* and the InfiniBand settings: see "NCCL and InfiniBand" below.

set -euo pipefail

MQ_LAUNCHER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/launch.sh"
MQ_ROOT="$(dirname "$(dirname "$MQ_LAUNCHER")")"

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

log_dir() {
    echo "${LOG_DIR:-$CHECKPOINT_DIR/logs}"
}

# --- the flags every job shares -------------------------------------------------------------
common_flags() {  # MODULE
    require_env DATA_PATH "shard prefix(es) written by tools/preprocess_data.py"
    require_env CHECKPOINT_DIR "directory to save checkpoints in"
    local log_dir
    log_dir="$(log_dir)"
    local -a data_path
    # shellcheck disable=SC2153  # DATA_PATH is the user's, checked by require_env above
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
        # slurm's warning before the time limit (#SBATCH --signal=B:USR1@S), forwarded by the batch script:
        # save, exit, resume on requeue. torchrun ignores SIGUSR1 (launch below), so it gives the save
        # all the time it needs; on SIGTERM it would kill its workers after 30 s.
        --exit-signal-handler --exit-signal SIGUSR1
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
first_host() {
    local hosts
    hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
    [[ -n "$hosts" ]] || die "scontrol show hostnames '$SLURM_JOB_NODELIST' printed no host"
    echo "${hosts%%$'\n'*}"
}

node_flags() {
    local gpus="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
    if [[ -n "${SLURM_JOB_ID:-}" ]]; then
        [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NNODES:-}" && -n "${SLURM_NODEID:-}" ]] ||
            die "inside slurm job $SLURM_JOB_ID but SLURM_JOB_NODELIST, SLURM_NNODES or SLURM_NODEID is unset"
        local master="${MQ_MASTER_ADDR:-}"  # found by the batch script: a container may lack scontrol
        [[ -n "$master" ]] || master="$(first_host)"
        # Derived from the job id: every node computes the same port, and two jobs sharing a
        # node rarely collide. Below 32768, out of Linux's ephemeral port range.
        NODE=(--nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "$gpus"
              --master_addr "$master" --master_port "${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}")
    else
        NODE=(--nnodes 1 --node_rank 0 --nproc_per_node "$gpus"
              --master_addr localhost --master_port "${MASTER_PORT:-29500}")
    fi
}

# --- NCCL and InfiniBand ---------------------------------------------------------------------
# Set here, the same on every cluster (a value already in the environment is kept):
#   CUDA_DEVICE_MAX_CONNECTIONS=1  megatron-core's tensor/sequence-parallel overlap needs ordered CUDA streams
#   NCCL_DEBUG=WARN                NCCL's warnings in the job log (INFO only while chasing a hang: it is large)
#   NCCL_IB_TIMEOUT=22             InfiniBand retry timeout 4.096 us x 2^22, about 17 s: a fabric hiccup on a
#                                  large job retries instead of failing the collective
# Cluster-dependent, so not set here: export them (or have /etc/nccl.conf set them) as the cluster's own
# examples do; srun, pyxis and Apptainer pass the environment into every process.
#   NCCL_SOCKET_IFNAME  the IP interface for NCCL's bootstrap and socket traffic (ib0, bond0, "^lo,docker")
#   NCCL_IB_HCA         the InfiniBand/RoCE adapters and ports to use (mlx5_0,mlx5_1,...; "^mlx5_bond" to exclude)
#   NCCL_IB_GID_INDEX   RoCE only: the GID index of the adapter's RoCE v2 address (commonly 3)
#   NCCL_IB_SL, NCCL_IB_TC  the fabric's service level / traffic class, when its QoS asks for them
#   NCCL_NET_GDR_LEVEL  how far apart a NIC and a GPU may be for GPUDirect RDMA, on unusual PCIe topologies
#   NCCL_NET_PLUGIN, NCCL_TOPO_FILE  cloud fabrics (EFA, Azure and GCP images document theirs)
nccl_env() {
    export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
    export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
    export NCCL_IB_TIMEOUT="${NCCL_IB_TIMEOUT:-22}"
}

# --- the srun step, on the host or in a container ----------------------------------------------
step_command() {  # MODULE FLAG...: STEP, the command that starts this file once per node
    STEP=(srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    local mounts="$MQ_ROOT:$MQ_ROOT,$CHECKPOINT_DIR:$CHECKPOINT_DIR${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    if [[ -n "${CONTAINER_IMAGE:-}" && -n "${APPTAINER_IMAGE:-}" ]]; then
        die "CONTAINER_IMAGE (pyxis) and APPTAINER_IMAGE are both set; set one"
    elif [[ -n "${CONTAINER_IMAGE:-}" ]]; then  # pyxis/enroot: srun itself starts the container
        STEP+=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mounts" --container-workdir="$MQ_ROOT")
    elif [[ -n "${APPTAINER_IMAGE:-}" ]]; then  # each task starts the image with the GPUs (--nv)
        STEP+=(apptainer exec --nv --bind "$mounts" --pwd "$MQ_ROOT" "$APPTAINER_IMAGE")
    fi
    STEP+=(bash "$MQ_LAUNCHER" "$@")
}

# --- requeue an unfinished slurm job -----------------------------------------------------------
requeue_if_unfinished() {  # after a clean exit: the last checkpoint short of the run's last iteration
    local metrics done_iters=0 train_iters=""
    metrics="$(log_dir)/metrics.jsonl"
    has_checkpoint "$CHECKPOINT_DIR" && done_iters="$(<"$CHECKPOINT_DIR/latest_checkpointed_iteration.txt")"
    # Every logged iteration states the run's length, whether given in steps, samples or tokens.
    if [[ -f "$metrics" ]]; then
        train_iters="$({ grep -o '"train_iters": [0-9]*' "$metrics" || true; } | tail -n 1 | tr -dc 0-9)"
    fi
    if [[ -n "$train_iters" && "$done_iters" -lt "$train_iters" ]]; then
        echo "launch: stopped at iteration $done_iters of $train_iters; requeueing slurm job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"  # the job starts again with the same command and resumes
    fi
}

run_step() {  # MODULE FLAG...: the batch script's part
    require_env CHECKPOINT_DIR "directory to save checkpoints in"
    mkdir -p "$CHECKPOINT_DIR"  # a container mounts it: it must exist
    MQ_MASTER_ADDR="$(first_host)"
    export MQ_MASTER_ADDR
    step_command "$@"
    [[ "${DRY_RUN:-0}" == 1 ]] && { printf '%q ' "${STEP[@]}"; echo; }
    "${STEP[@]}" &
    local step_pid=$! code=0
    # slurm's warning signal reaches this shell only (B:); srun forwards it to every process of the step.
    trap 'echo "launch: warning signal from slurm; the run saves and exits"; kill -USR1 "$step_pid"' USR1
    while true; do
        wait "$step_pid" && code=0 || code=$?
        kill -0 "$step_pid" 2> /dev/null || break  # wait returned for the signal, not for the step's end
    done
    trap - USR1
    [[ "$code" == 0 && "${DRY_RUN:-0}" != 1 ]] && requeue_if_unfinished
    return "$code"
}

# --- a budget in EXTRA_ARGS replaces the script's ------------------------------------------------
# A run's length is one flag of three (--train-iters, --train-samples, --train-tokens: given together they
# are refused), so the last-occurrence rule cannot settle it: EXTRA_ARGS' budget drops the script's.
BUDGET_FLAGS=" --train-iters --train-samples --train-tokens "

budget_overridden() {  # FLAG...: does this list state a budget?
    local arg
    for arg in "$@"; do [[ "$BUDGET_FLAGS" == *" $arg "* ]] && return 0; done
    return 1
}

without_budget() {  # FLAG...: KEPT, the flags less any budget flag and its value
    KEPT=()
    while [[ $# -gt 0 ]]; do
        [[ "$BUDGET_FLAGS" == *" $1 "* ]] && shift || KEPT+=("$1")  # a budget flag: drop it and its value
        [[ $# -gt 0 ]] && shift
    done
    return 0
}

# --- launch ----------------------------------------------------------------------------------
launch() {  # MODULE FLAG...
    local module="$1"
    shift
    if [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" ]]; then
        # The batch script runs on the first node only: start one launcher per node. (Not this
        # job script itself: sbatch runs a private copy that the other nodes cannot see.)
        run_step "$module" "$@"
        return
    fi
    common_flags "$module"
    node_flags
    nccl_env
    local -a extra own=("$@")
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    budget_overridden "${extra[@]}" && without_budget "$@" && own=("${KEPT[@]}")
    # The job's own flags come after the shared ones, and EXTRA_ARGS last: the last occurrence wins.
    local -a cmd=("${TORCHRUN:-torchrun}" "${NODE[@]}" -m "$module" "${COMMON[@]}" "${own[@]}" "${extra[@]}")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"
        echo
        return
    fi
    # SIGUSR1 ignored here is ignored by torchrun and inherited by its workers, whose --exit-signal-handler
    # installs its own handler for it: the warning reaches the training processes only.
    trap '' USR1
    exec "${cmd[@]}"
}

# Executed (by srun on every node) rather than sourced: launch the given module and flags.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    [[ $# -ge 1 ]] || die "usage: launch.sh MODULE FLAG... (normally called from a job script)"
    launch "$@"
fi
