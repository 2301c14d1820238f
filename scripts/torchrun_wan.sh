#!/usr/bin/env bash
# Wan2.1 text-to-video on several processes: sequence parallelism (Ulysses x Ring = NPROC) with torchrun, NCCL on
# GPUs, gloo on CPUs, optionally with the ProfilingDiT cache. Every generate.py flag is written out below.
#
# Inputs (environment variables; defaults in brackets):
#   NPROC [2]                  processes (GPUs); must equal ULYSSES x RING
#   ULYSSES [NPROC]            --ulysses_size: must divide the model's heads (14B: 40, 1.3B: 12, tiny: 4)
#   RING [1]                   --ring_size
#   TASK [t2v-tiny]            --task
#   SIZE [64*64]               --size (W*H)
#   FRAME_NUM [17]             --frame_num (4n+1)
#   CKPT_DIR [Wan2.1/Wan2.1-T2V-tiny]  --ckpt_dir
#   PROMPT [a red circle moves to the right]
#   SOLVER [unipc]  STEPS [50]  SHIFT [3.0]  GUIDE_SCALE [5.0]  SEED [42]
#   T5_CPU [0]                 1: --t5_cpu
#   CACHE [delta]              delta: --delta_cache (the task's built-in profile); none: full compute;
#                              a path: --cache_profile PATH
#   CACHE_STATS []             --cache_stats PATH
#   SAVE_FILE [results/wan_<task>_u<U>r<R>_<cache>.mp4]
#   PYTHON [python]
#
# Example (8 GPUs, 14B at 720p, Ulysses 8):
#   NPROC=8 ULYSSES=8 RING=1 TASK=t2v-14B SIZE=1280*720 FRAME_NUM=81 CKPT_DIR=./Wan2.1-T2V-14B SHIFT=5.0 \
#     PROMPT="Two cats box on a stage." bash scripts/torchrun_wan.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC="${NPROC:-2}"
ULYSSES="${ULYSSES:-$NPROC}"
RING="${RING:-1}"
TASK="${TASK:-t2v-tiny}"
SIZE="${SIZE:-64*64}"
FRAME_NUM="${FRAME_NUM:-17}"
CKPT_DIR="${CKPT_DIR:-$ROOT/Wan2.1/Wan2.1-T2V-tiny}"
PROMPT="${PROMPT:-a red circle moves to the right}"
SOLVER="${SOLVER:-unipc}"
STEPS="${STEPS:-50}"
SHIFT="${SHIFT:-3.0}"
GUIDE_SCALE="${GUIDE_SCALE:-5.0}"
SEED="${SEED:-42}"
T5_CPU="${T5_CPU:-0}"
CACHE="${CACHE:-delta}"
CACHE_STATS="${CACHE_STATS:-}"
PYTHON="${PYTHON:-python}"

case "$CACHE" in
  delta) cache_flags=(--delta_cache); cache_tag=delta ;;
  none) cache_flags=(); cache_tag=full ;;
  *) cache_flags=(--cache_profile "$CACHE"); cache_tag=profile ;;
esac
SAVE_FILE="${SAVE_FILE:-$ROOT/results/wan_${TASK}_u${ULYSSES}r${RING}_${cache_tag}.mp4}"
extra_flags=()
if [ "$T5_CPU" = 1 ]; then extra_flags+=(--t5_cpu); fi
if [ -n "$CACHE_STATS" ]; then extra_flags+=(--cache_stats "$CACHE_STATS"); fi
mkdir -p "$(dirname "$SAVE_FILE")"
# generate.py runs from its own folder: a CKPT_DIR found from here is made absolute first.
CKPT_DIR="$(cd "$CKPT_DIR" 2>/dev/null && pwd || echo "$CKPT_DIR")"

cd "$ROOT/Wan2.1"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" generate.py \
  --task "$TASK" \
  --size "$SIZE" \
  --frame_num "$FRAME_NUM" \
  --ckpt_dir "$CKPT_DIR" \
  --ulysses_size "$ULYSSES" \
  --ring_size "$RING" \
  --prompt "$PROMPT" \
  --base_seed "$SEED" \
  --sample_solver "$SOLVER" \
  --sample_steps "$STEPS" \
  --sample_shift "$SHIFT" \
  --sample_guide_scale "$GUIDE_SCALE" \
  --save_file "$SAVE_FILE" \
  ${cache_flags[@]+"${cache_flags[@]}"} ${extra_flags[@]+"${extra_flags[@]}"}
