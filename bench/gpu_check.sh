#!/usr/bin/env bash
# The whole GPU verification in one command; results in OUT_DIR/results.md and OUT_DIR/results.json,
# every stage's output in OUT_DIR/gpu_check.log (docs/PERFORMANCE.md).
#
#   bench/gpu_check.sh OUT_DIR [--wheels DIR] [--cpu-dry-run] [--train-flags "FLAGS"] [--budget SECONDS]
#
# Stages, most important first, so a time budget that runs out cuts the least: (1) environment: versions,
# the GPU, which back ends import; (2) correctness: the tiny model in fp32 on the GPU against the CPU from
# the same initial weights, each back end (and compiled layers) in bf16 against fp32, RoPE precision, fused
# AdamW, the chunked loss against megatron-core's and against torch's at Qwen's vocabulary
# (bench/gpu/check_correctness.py states each tolerance and why); packed SFT against padded SFT, per
# conversation, on each back end (transformer-engine and flash-attn through megatron-core's THD layout;
# bench/gpu/check_packed_sft.py); on 4 GPUs with transformer-engine, the Code-Qwen scripts' layout, TP2 x CP2
# with sequence parallelism, saved and resumed, against TP1 x CP1 (bench/gpu/check_code_qwen_layout.py);
# (3) throughput: the Qwen-1.8B shape (24
# layers, bf16, seq 2048) at micro-batch 4 and 8, each also with compiled layers (--compile-layers: the
# fast path this check decides on), a Qwen-7B-width stack of 8 layers, 1.8B with full recompute; (4) where
# the time goes: the loss alone, chunked against megatron-core's, and one 1.8B step under torch.profiler;
# (5) start-up: a 72B rank's weight draws on the GPU; (6) DeepSpeed: the deepspeed engine with DeepSpeed's
# FusedAdam (its CUDA build, its step against torch's AdamW, the tiny model's losses against torch's AdamW
# and the megatron engine; bench/gpu/check_deepspeed.py); (7) checkpoints: the distributed optimizer's resume
# and what checksums cost a save (bench/gpu/check_resume.py); (8) a reward-model step beside a pretraining
# step of the same shape (bench/bench_reward.py, docs/reward.md). Each stage has a time limit (measured
# durations: docs/PERFORMANCE.md); a stage that runs out of time is reported as such while the next one starts.
#
# --wheels DIR: for a machine with CUDA and PyTorch but not this project's requirements; installs
# bench/gpu/requirements-gpu-check.txt offline from DIR (filled by bench/gpu/fetch_wheels.sh). torch is
# pinned to the installed build, so pip can never replace it.
# --cpu-dry-run (also chosen when CUDA is absent): every stage with tiny shapes and 1+1 iterations, on the
# CPU; results.md is written the same way. --train-flags "FLAGS": pretraining flags added to every
# throughput and profile run, e.g. "--no-cross-entropy-fusion" to measure without a path that
# fails on this machine; results.md names them. --budget SECONDS: the stages' time budget (840 on a GPU:
# 450 for stages 1-5, 180 for DeepSpeed's, 150 for the checkpoints' and 60 for the reward step's, which
# keeps the whole check under 15 minutes; a longer one lets every stage run where compilation is slow).
# Every stage that builds layers names its back end: the one --transformer-impl auto picks here for bf16,
# passed explicitly; compiled layers run on it unless it is transformer-engine (whose layer is fused
# already), then on sdpa. Exit status: 0 when every stage ran (or was skipped for want of GPUs) and every
# check passed.
set -uo pipefail

usage() {
  echo "usage: bench/gpu_check.sh OUT_DIR [--wheels DIR] [--cpu-dry-run] [--train-flags \"FLAGS\"] [--budget SECONDS]" >&2
  exit 2
}
case ${1:-} in
  -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
  ""|-*) usage ;;
esac
OUT=$1; shift
WHEELS=""; DRY=0; TRAIN_FLAGS=(); BUDGET_FLAG=""
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) [ $# -ge 2 ] || usage; WHEELS=$2; shift 2 ;;
    --cpu-dry-run) DRY=1; shift ;;
    --train-flags) [ $# -ge 2 ] || usage; read -ra TRAIN_FLAGS <<< "$2"; shift 2 ;;
    --budget) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; BUDGET_FLAG=$2; shift 2 ;;
    *) usage ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
LOG=$OUT/gpu_check.log
: > "$LOG"
: > "$WORK/stages.tsv"
export PYTHONPATH="$REPO:$REPO/bench:$REPO/bench/gpu${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
cd "$REPO" || exit 1

say() { echo "$*" | tee -a "$LOG"; }

if [ -n "$WHEELS" ]; then
  say "== installing bench/gpu/requirements-gpu-check.txt from $WHEELS (offline; torch pinned)"
  "$PY" -c "import torch" 2> /dev/null || { say "no torch here: install PyTorch first"; exit 2; }
  # --no-deps: the file lists every requirement but torch, and pip must never resolve torch (a CUDA
  # build's local version, +cu130, fails pip's resolver against megatron-core's torch>=2.6).
  "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" -r bench/gpu/requirements-gpu-check.txt \
    >> "$LOG" 2>&1 || { say "pip could not install from $WHEELS; see $LOG"; exit 2; }
fi
if ! "$PY" -c "import megatron.core" >> "$LOG" 2>&1; then
  say "megatron-core does not import: pass --wheels DIR (bench/gpu/fetch_wheels.sh fills DIR; docs/PERFORMANCE.md)"
  exit 2
fi
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  say "no CUDA device: running the CPU dry run instead"
  DRY=1
fi

# The back end auto picks for a bf16 run here (platform/backends.py), in the flag's spelling for the command lines.
BACKEND=$("$PY" -c "from megatron_qwen.platform.backends import available_backend; print(available_backend('bf16'))")
COMPILED_BACKEND=$([ "$BACKEND" = te ] && echo sdpa || echo "$BACKEND")
flag_of() { [ "$1" = te ] && echo transformer_engine || echo "$1"; }
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")

if [ "$DRY" = 1 ]; then
  # A shared CPU imports megatron-core and steps even the tiny model slowly: three times each stage's limit.
  MODE=cpu-dry-run; BUDGET=${BUDGET_FLAG:-3600}; CAP_SCALE=3
  ITERS=(--warmup 1 --iters 1)
  TINY=(--model-size tiny --seq-length 128 --micro-batch-size 2 --global-batch-size 4 --bf16)
  RUN_18B=("${TINY[@]}" --transformer-impl "$(flag_of "$BACKEND")" "${TRAIN_FLAGS[@]}")
  RUN_18B_MB8=("${RUN_18B[@]}" --micro-batch-size 4)
  RUN_7B=("${RUN_18B[@]}" --num-layers 2)
  QUICK=--quick; INIT_SIZE=tiny; RUN_REWARD=("${RUN_18B[@]}"); REWARD_ROUNDS=1
else
  # 840 s of stages (450 for 1-5, 180 for DeepSpeed, 150 for the checkpoints, 60 for the reward step) leaves the
  # 15-minute promise room for start-up and the report.
  MODE=gpu; BUDGET=${BUDGET_FLAG:-840}; CAP_SCALE=1
  ITERS=(--warmup 3 --iters 10)  # the first warm-up step compiles (fused kernels; with --compile-layers, the layer)
  # Shapes chosen to fit one 80 GB GPU: 1.8B at micro-batch 4 (2 leaves the GPU waiting for the host) and 8
  # (fits with the chunked loss only); 7B width at 8 layers (2.9B parameters, no distributed optimizer) at
  # micro-batch 2. Their measured and planned memory, with the commands: docs/PERFORMANCE.md.
  RUN_18B=(--model-size 1.8b --bf16 --seq-length 2048 --micro-batch-size 4 --global-batch-size 16
           --transformer-impl "$(flag_of "$BACKEND")" "${TRAIN_FLAGS[@]}")
  RUN_18B_MB8=("${RUN_18B[@]}" --micro-batch-size 8)
  RUN_7B=(--model-size 7b --num-layers 8 --bf16 --seq-length 2048 --micro-batch-size 2 --global-batch-size 8
          --transformer-impl "$(flag_of "$BACKEND")" "${TRAIN_FLAGS[@]}")
  QUICK=""; INIT_SIZE=72b
  RUN_REWARD=(--model-size 1.8b --num-layers 12 --bf16 --seq-length 2048 --micro-batch-size 4
              --transformer-impl "$(flag_of "$BACKEND")" "${TRAIN_FLAGS[@]}")
  REWARD_ROUNDS=5
fi

# stage NAME CAP_SECONDS COMMAND...: run with a time limit of CAP or what is left of the budget.
FAILED=0
stage() {
  local name=$1 cap=$(($2 * CAP_SCALE)); shift 2
  local left=$((BUDGET - SECONDS)) limit rc start=$SECONDS
  limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 10 ]; then
    say "== $name: skipped, the time budget is spent"
    printf '%s\tskipped (time budget spent)\t0\n' "$name" >> "$WORK/stages.tsv"; FAILED=1; return
  fi
  say "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | grep -v "Warning\|warnings.warn" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local status=ok
  [ "$rc" = 124 ] && status="timed out after ${limit}s"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="failed (exit $rc)"
  [ "$rc" != 0 ] && FAILED=1
  printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - start)) >> "$WORK/stages.tsv"
}
# skip NAME REASON: a stage this machine cannot run (not a failure; results.md says why).
skip() {
  say "== $1: skipped, $2"
  printf '%s\tskipped (%s)\t0\n' "$1" "$2" >> "$WORK/stages.tsv"
}

stage environment 60 "$PY" bench/gpu/check_env.py "$WORK/env.json"
stage "correctness: CPU reference" 120 env CUDA_VISIBLE_DEVICES= "$PY" bench/gpu/check_correctness.py \
  reference "$WORK/reference.pt" $QUICK
stage "correctness: device (each back end)" 180 "$PY" bench/gpu/check_correctness.py compare "$WORK/reference.pt" \
  "$WORK/correctness.json" $QUICK
stage "correctness: packed SFT vs padded (each back end)" 90 "$PY" bench/gpu/check_packed_sft.py \
  "$WORK/packed_sft.json" $QUICK
LAYOUT_STAGE="correctness: Code-Qwen layout, TP2 x CP2 + SP vs TP1 (te)"
if [ "$DRY" = 0 ] && [ "$GPUS" -ge 4 ] && [ "$BACKEND" = te ]; then
  stage "$LAYOUT_STAGE" 240 "$PY" bench/gpu/check_code_qwen_layout.py "$WORK/code_qwen_layout.json"
else
  skip "$LAYOUT_STAGE" "needs 4 GPUs and transformer-engine; here $GPUS GPU(s), back end $BACKEND"
fi
# each layer compiled: the fast path's back end (transformer-engine's layer is fused already: --compile-layers refuses it)
COMPILE=(--compile-layers --transformer-impl "$(flag_of "$COMPILED_BACKEND")")
stage "throughput: 1.8B ($BACKEND)" 120 "$PY" bench/bench_train.py "${ITERS[@]}" "${RUN_18B[@]}" \
  --json "$WORK/throughput_1.8b.json"
stage "throughput: 1.8B micro-batch 8 ($BACKEND)" 120 "$PY" bench/bench_train.py "${ITERS[@]}" "${RUN_18B_MB8[@]}" \
  --json "$WORK/throughput_1.8b-mb8.json"
stage "fast path: compiled layers ($COMPILED_BACKEND)" 150 "$PY" bench/bench_train.py "${ITERS[@]}" "${RUN_18B[@]}" \
  "${COMPILE[@]}" --json "$WORK/throughput_1.8b-compiled.json"
stage "fast path: compiled layers, micro-batch 8 ($COMPILED_BACKEND)" 150 "$PY" bench/bench_train.py "${ITERS[@]}" \
  "${RUN_18B_MB8[@]}" "${COMPILE[@]}" --json "$WORK/throughput_1.8b-mb8-compiled.json"
stage "throughput: 7B width ($BACKEND)" 120 "$PY" bench/bench_train.py "${ITERS[@]}" "${RUN_7B[@]}" \
  --json "$WORK/throughput_7b-width.json"
stage "throughput: 1.8B recompute ($BACKEND)" 120 "$PY" bench/bench_train.py "${ITERS[@]}" "${RUN_18B[@]}" \
  --recompute-granularity full --json "$WORK/throughput_1.8b-recompute.json"
stage "the loss alone (no layers)" 90 "$PY" bench/gpu/bench_loss.py "$WORK/loss.json" $QUICK
stage "profile: 1.8B step ($BACKEND)" 60 "$PY" bench/gpu/profile_step.py "$WORK/profile.txt" "${RUN_18B[@]}"
# a 72B rank's weight draws on the GPU; the dry run times the tiny preset's on the CPU
DEVICE=$([ "$DRY" = 1 ] && echo cpu || echo cuda)
stage "start-up: $INIT_SIZE draws on the $DEVICE" 60 "$PY" bench/bench_init.py --model-size "$INIT_SIZE" \
  --device "$DEVICE" --json "$WORK/init_${INIT_SIZE}_${DEVICE}.json"
stage "deepspeed: fused Adam (sdpa)" 180 "$PY" bench/gpu/check_deepspeed.py "$WORK/deepspeed.json" $QUICK
stage "checkpoints: distributed optimizer resume, checksum cost" 150 "$PY" bench/gpu/check_resume.py \
  "$WORK/checkpoints.json" $QUICK
# the reward model's step beside pretraining's, same shape (docs/reward.md); 1.8B's width at 12 layers: two models
stage "throughput: reward step ($BACKEND)" 60 "$PY" bench/bench_reward.py --rounds "$REWARD_ROUNDS" --steps 2 \
  "${RUN_REWARD[@]}" --json "$WORK/reward.json"

"$PY" bench/gpu/report.py "$WORK" "$OUT" "$MODE" "bench/gpu_check.sh $OUT${WHEELS:+ --wheels $WHEELS}$([ "$DRY" = 1 ] && echo ' --cpu-dry-run')${TRAIN_FLAGS[*]:+ --train-flags \"${TRAIN_FLAGS[*]}\"}${BUDGET_FLAG:+ --budget $BUDGET_FLAG}" \
  >> "$LOG" 2>&1 || { say "the report could not be written; see $LOG"; exit 1; }
rm -rf "$WORK"
say "== done in ${SECONDS}s: $OUT/results.md ($([ "$FAILED" = 0 ] && echo 'every stage ran, every check passed' || echo 'a stage failed or a check did not pass'))"
exit "$FAILED"
