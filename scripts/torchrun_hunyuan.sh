#!/usr/bin/env bash
# HunyuanVideo text-to-video on several processes: sequence parallelism (Ulysses x Ring = NPROC) with torchrun, NCCL
# on GPUs, gloo on CPUs, optionally with the ProfilingDiT cache. Every sample_video.py flag is written out below.
#
# Inputs (environment variables; defaults in brackets):
#   NPROC [2]                  processes (GPUs); must equal ULYSSES x RING
#   ULYSSES [NPROC]            --ulysses-degree: must divide the heads (24 for the official model)
#   RING [1]                   --ring-degree
#   MODEL_BASE [./ckpts]       --model-base: the official checkpoint tree
#   MODEL [HYVideo-T/2-cfgdistill]  --model
#   DIT_WEIGHT [<MODEL_BASE>/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt]  --dit-weight
#   DIT_CONFIG []              --dit-config PATH (a non-official architecture; empty: --model)
#   VIDEO_SIZE [720 1280]      --video-size H W
#   VIDEO_LENGTH [129]         --video-length (4n+1)
#   PROMPT [A cat walks on the grass, realistic style.]
#   STEPS [50]  FLOW_SHIFT [7.0]  EMBEDDED_CFG_SCALE [6.0]  CFG_SCALE [1.0]  SEED [42]
#   CACHE [delta]              delta: --delta_cache (the built-in profile); none: full compute;
#                              a path: --cache-profile PATH
#   CACHE_STATS []             --cache-stats PATH
#   SAVE_PATH [results/hunyuan_u<U>r<R>_<cache>]  --save-path (a folder)
#   PYTHON [python]
#
# Example (8 GPUs, 720p, Ulysses 4 x Ring 2):
#   NPROC=8 ULYSSES=4 RING=2 MODEL_BASE=./ckpts bash scripts/torchrun_hunyuan.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC="${NPROC:-2}"
ULYSSES="${ULYSSES:-$NPROC}"
RING="${RING:-1}"
MODEL_BASE="${MODEL_BASE:-./ckpts}"
MODEL="${MODEL:-HYVideo-T/2-cfgdistill}"
DIT_CONFIG="${DIT_CONFIG:-}"
VIDEO_SIZE="${VIDEO_SIZE:-720 1280}"
VIDEO_LENGTH="${VIDEO_LENGTH:-129}"
PROMPT="${PROMPT:-A cat walks on the grass, realistic style.}"
STEPS="${STEPS:-50}"
FLOW_SHIFT="${FLOW_SHIFT:-7.0}"
EMBEDDED_CFG_SCALE="${EMBEDDED_CFG_SCALE:-6.0}"
CFG_SCALE="${CFG_SCALE:-1.0}"
SEED="${SEED:-42}"
CACHE="${CACHE:-delta}"
CACHE_STATS="${CACHE_STATS:-}"
PYTHON="${PYTHON:-python}"

case "$CACHE" in
  delta) cache_flags=(--delta_cache); cache_tag=delta ;;
  none) cache_flags=(); cache_tag=full ;;
  *) cache_flags=(--cache-profile "$CACHE"); cache_tag=profile ;;
esac
SAVE_PATH="${SAVE_PATH:-$ROOT/results/hunyuan_u${ULYSSES}r${RING}_${cache_tag}}"
read -r -a video_size <<< "$VIDEO_SIZE"
extra_flags=()
if [ -n "$DIT_CONFIG" ]; then extra_flags+=(--dit-config "$DIT_CONFIG"); fi
if [ -n "$CACHE_STATS" ]; then extra_flags+=(--cache-stats "$CACHE_STATS"); fi
# sample_video.py runs from its own folder: a MODEL_BASE found from here is made absolute first.
MODEL_BASE="$(cd "$MODEL_BASE" 2>/dev/null && pwd || echo "$MODEL_BASE")"
DIT_WEIGHT="${DIT_WEIGHT:-$MODEL_BASE/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt}"

cd "$ROOT/HunyuanVideo"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" sample_video.py \
  --model "$MODEL" \
  --model-base "$MODEL_BASE" \
  --dit-weight "$DIT_WEIGHT" \
  --video-size "${video_size[@]}" \
  --video-length "$VIDEO_LENGTH" \
  --infer-steps "$STEPS" \
  --prompt "$PROMPT" \
  --seed "$SEED" \
  --flow-reverse \
  --flow-shift "$FLOW_SHIFT" \
  --embedded-cfg-scale "$EMBEDDED_CFG_SCALE" \
  --cfg-scale "$CFG_SCALE" \
  --ulysses-degree "$ULYSSES" \
  --ring-degree "$RING" \
  --save-path "$SAVE_PATH" \
  ${cache_flags[@]+"${cache_flags[@]}"} ${extra_flags[@]+"${extra_flags[@]}"}
