#!/usr/bin/env bash
# Sweep prompts x seeds x cache modes (full, delta cache, TeaCache thresholds) through Wan2.1/generate.py,
# then compare every cached mode with full (scripts/video_metrics.py). Resumable: a finished output is skipped.
#
# Inputs (environment variables; defaults in brackets):
#   TASK [t2v-tiny]            Wan2.1 task
#   CKPT_DIR [task default]    checkpoint folder
#   PROMPTS_FILE [held-out captions of the tiny model]  one prompt per line
#   NUM_PROMPTS [20]           captions to generate when PROMPTS_FILE is not set (tiny model only)
#   SEEDS ["42"]               space-separated seeds
#   MODES ["full delta tea"]   any of full, delta, tea (full always runs: it is the reference)
#   THRESHOLDS ["0.05 0.1 0.2"] TeaCache thresholds for mode tea
#   TEACACHE_COEFFICIENTS []   scripts/fit_teacache.py JSON (empty: published or uncalibrated)
#   USE_RET_STEPS [0]          1: TeaCache on e0 with the first 5 steps forced
#   CACHE_PROFILE []           delta cache profile (empty: the task's built-in one, --delta_cache)
#   STEPS []                   --sample_steps (empty: the task default)
#   OUT_DIR [outputs/sweep_$TASK]  videos in $OUT_DIR/<mode>/p<index>_s<seed>.mp4, logs, metrics
#   EXTRA_ARGS []              appended to every generate.py call
#   METRICS [1]                0: skip the metrics step
#   PYTHON [python]
#
# Example:
#   TASK=t2v-tiny SEEDS="1 2" THRESHOLDS="0.1 0.3" TEACACHE_COEFFICIENTS=$PWD/fit.json bash scripts/sweep_wan.sh
#
# Arguments: only --help (-h). Every setting is an environment variable; any other argument is refused, and every
# value is checked before anything is generated or written.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
fail() { echo "error: $*" >&2; exit 2; }
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) fail "sweep_wan.sh takes no arguments, got '$arg': settings are environment variables, e.g." \
         "SEEDS=\"1 2\" MODES=\"full tea\" bash scripts/sweep_wan.sh (see --help)" ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASK="${TASK:-t2v-tiny}"
CKPT_DIR="${CKPT_DIR:-}"
PROMPTS_FILE="${PROMPTS_FILE:-}"
NUM_PROMPTS="${NUM_PROMPTS:-20}"
SEEDS="${SEEDS:-42}"
MODES="${MODES:-full delta tea}"
THRESHOLDS="${THRESHOLDS:-0.05 0.1 0.2}"
TEACACHE_COEFFICIENTS="${TEACACHE_COEFFICIENTS:-}"
USE_RET_STEPS="${USE_RET_STEPS:-0}"
CACHE_PROFILE="${CACHE_PROFILE:-}"
STEPS="${STEPS:-}"
OUT_DIR="${OUT_DIR:-outputs/sweep_${TASK}}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
METRICS="${METRICS:-1}"
PYTHON="${PYTHON:-python}"

# generate.py runs from inside Wan2.1/: make every path absolute first.
absolute() { [[ -z "$1" ]] && return 0; realpath -m -s -- "$1"; }
OUT_DIR="$(absolute "$OUT_DIR")"
CKPT_DIR="$(absolute "$CKPT_DIR")"
CACHE_PROFILE="$(absolute "$CACHE_PROFILE")"
TEACACHE_COEFFICIENTS="$(absolute "$TEACACHE_COEFFICIENTS")"
[[ -n "$PROMPTS_FILE" ]] && PROMPTS_FILE="$(absolute "$PROMPTS_FILE")"
[[ "$PYTHON" == */* ]] && PYTHON="$(absolute "$PYTHON")"

# Every value is checked before the first generation (the generate.py flags themselves by generate.py).
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_number() { [[ "$1" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; }
is_int "$NUM_PROMPTS" && (( NUM_PROMPTS >= 1 )) || fail "NUM_PROMPTS=$NUM_PROMPTS is not allowed: expected an integer >= 1"
[[ -n "${SEEDS// }" ]] || fail "SEEDS is empty: expected space-separated integers, e.g. SEEDS=\"42 43\""
for seed in $SEEDS; do is_int "$seed" || fail "SEEDS entry '$seed' is not allowed: expected an integer >= 0"; done
for t in $THRESHOLDS; do is_number "$t" || fail "THRESHOLDS entry '$t' is not allowed: expected a number >= 0"; done
[[ "$USE_RET_STEPS" == 0 || "$USE_RET_STEPS" == 1 ]] || fail "USE_RET_STEPS=$USE_RET_STEPS is not allowed: expected 0 or 1"
[[ "$METRICS" == 0 || "$METRICS" == 1 ]] || fail "METRICS=$METRICS is not allowed: expected 0 or 1"
[[ -z "$STEPS" ]] || { is_int "$STEPS" && (( STEPS >= 1 )); } \
  || fail "STEPS=$STEPS is not allowed: expected an integer >= 1 (or empty: the task default)"
[[ -z "$PROMPTS_FILE" || -f "$PROMPTS_FILE" ]] || fail "PROMPTS_FILE=$PROMPTS_FILE does not exist"
[[ -z "$CACHE_PROFILE" || -f "$CACHE_PROFILE" ]] || fail "CACHE_PROFILE=$CACHE_PROFILE does not exist"
[[ -z "$TEACACHE_COEFFICIENTS" || -f "$TEACACHE_COEFFICIENTS" ]] \
  || fail "TEACACHE_COEFFICIENTS=$TEACACHE_COEFFICIENTS does not exist"
[[ -n "$PROMPTS_FILE" || "$TASK" == "t2v-tiny" ]] || fail "PROMPTS_FILE is required for TASK=$TASK (one prompt per line)"

# mode name -> extra generate.py flags
declare -A MODE_ARGS=([full]="")
MODE_ORDER=(full)
for mode in $MODES; do
  case "$mode" in
    full) ;;
    delta)
      MODE_ORDER+=(delta)
      MODE_ARGS[delta]="--delta_cache"
      [[ -n "$CACHE_PROFILE" ]] && MODE_ARGS[delta]="--cache_profile $CACHE_PROFILE" ;;
    tea)
      for t in $THRESHOLDS; do
        name="tea-$t"
        MODE_ORDER+=("$name")
        MODE_ARGS[$name]="--teacache_thresh $t"
        [[ -n "$TEACACHE_COEFFICIENTS" ]] && MODE_ARGS[$name]+=" --teacache_coefficients $TEACACHE_COEFFICIENTS"
        [[ "$USE_RET_STEPS" == "1" ]] && MODE_ARGS[$name]+=" --use_ret_steps"
      done ;;
    *) fail "MODES entry '$mode' is not allowed: expected full, delta or tea" ;;
  esac
done

mkdir -p "$OUT_DIR/logs"

if [[ -z "$PROMPTS_FILE" ]]; then
  PROMPTS_FILE="$OUT_DIR/prompts.txt"
  if [[ ! -s "$PROMPTS_FILE" ]]; then
    (cd "$ROOT/Wan2.1" && "$PYTHON" -c "
import sys
from wan.tiny.data import caption, eval_specs
print('\n'.join(caption(s) for s in eval_specs(int(sys.argv[1]))))" "$NUM_PROMPTS") > "$PROMPTS_FILE.tmp"
    mv "$PROMPTS_FILE.tmp" "$PROMPTS_FILE"
  fi
fi

common=(--task "$TASK")
[[ -n "$CKPT_DIR" ]] && common+=(--ckpt_dir "$CKPT_DIR")
[[ -n "$STEPS" ]] && common+=(--sample_steps "$STEPS")

index=0
while IFS= read -r prompt || [[ -n "$prompt" ]]; do
  [[ -z "${prompt// }" ]] && continue
  for seed in $SEEDS; do
    for mode in "${MODE_ORDER[@]}"; do
      name="p$(printf %03d "$index")_s${seed}"
      video="$OUT_DIR/$mode/$name.mp4"
      stats="$OUT_DIR/$mode/$name.json"
      if [[ -f "$video" && -f "$stats" ]]; then
        continue  # finished earlier
      fi
      mkdir -p "$OUT_DIR/$mode"
      extra=(--cache_stats "$stats")  # every mode, full included: the timings of the reference
      echo "[$mode] $name: $prompt"
      # shellcheck disable=SC2086  # MODE_ARGS and EXTRA_ARGS are word lists on purpose
      (cd "$ROOT/Wan2.1" && "$PYTHON" generate.py "${common[@]}" --prompt "$prompt" --base_seed "$seed" \
        --save_file "$video" "${extra[@]}" ${MODE_ARGS[$mode]} $EXTRA_ARGS) > "$OUT_DIR/logs/$mode-$name.log" 2>&1 \
        || { echo "error: generate.py failed, see $OUT_DIR/logs/$mode-$name.log" >&2; exit 1; }
    done
  done
  index=$((index + 1))
done < "$PROMPTS_FILE"

if [[ "$METRICS" == "1" ]]; then
  for mode in "${MODE_ORDER[@]:1}"; do
    "$PYTHON" "$ROOT/scripts/video_metrics.py" --ref "$OUT_DIR/full" --test "$OUT_DIR/$mode" \
      --json "$OUT_DIR/metrics-$mode.json" --md "$OUT_DIR/metrics-$mode.md" > /dev/null
    echo "metrics of $mode vs full: $OUT_DIR/metrics-$mode.md"
  done
fi
