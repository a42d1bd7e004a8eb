#!/usr/bin/env bash
# The "must show" experiments of the wave-2 model-family issues (11: the sequential model and DRAW,
# 12: GMN and the Neural Statistician, 13: Matching Networks and the classification benchmark), on
# the embedded strokes dataset and on real Omniglot (images_background_small1, one alphabet held out).
#
#   scripts/wave2_experiments.sh data            # build the datasets (strokes26; Omniglot strong + weak splits)
#   scripts/wave2_experiments.sh train-strokes   # every family on strokes26, STEPS steps each
#   scripts/wave2_experiments.sh train-omniglot  # the families on Omniglot (strong: Latin held out; weak: characters)
#   scripts/wave2_experiments.sh eval-strokes    # the full protocol of every strokes run, then one comparison
#   scripts/wave2_experiments.sh eval-omniglot
#   scripts/wave2_experiments.sh all
#
# Resumable: a finished run (final_metrics.json) or evaluation (its JSON) is skipped; a run with
# checkpoints continues with --resume. One thread per job (the shared 2-core machine: JOBS=2 runs two
# trainings side by side). Everything lands under RUNS (default runs/wave2) and OUT (out/wave2).
set -euo pipefail
cd "$(dirname "$0")/.."
VARMEM=${VARMEM:-.venv/bin/varmem}
RUNS=${RUNS:-runs/wave2}
OUT=${OUT:-out/wave2}
STEPS=${STEPS:-2000}            # the same number of optimizer steps for every family (its images per step differ: see RESULTS)
OMNI_STEPS=${OMNI_STEPS:-3000}
JOBS=${JOBS:-2}
STROKES=${STROKES:-data/strokes26}
OMNI_ZIP=${OMNI_ZIP:-../shared/data/omniglot/images_background_small1.zip}
OMNI_STRONG=${OMNI_STRONG:-data/omniglot26-small1}        # Latin held out (the strong split: a whole alphabet)
OMNI_WEAK=${OMNI_WEAK:-data/omniglot26-small1-weak}       # 20% of every alphabet's characters held out (weak)
SAMPLES=${SAMPLES:-200}         # K of the NLL tables (the seeds: 1,000)
EPISODES=${EPISODES:-20}
export OMP_NUM_THREADS=1

log() { echo "[$(date +%H:%M:%S)] $*"; }

wait_slot() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done; }

# train NAME CONFIG DATA STEPS [--set ...]
train() {
  local name=$1 config=$2 data=$3 steps=$4; shift 4
  local run=$RUNS/$name
  if [ -f "$run/final_metrics.json" ]; then log "train $name: done already"; return; fi
  local resume=()
  if ls "$run"/checkpoints/*.pt >/dev/null 2>&1; then resume=(--resume); fi
  wait_slot
  log "train $name ($config, $steps steps${resume:+, resumed})"
  mkdir -p "$RUNS/logs"
  ( /usr/bin/time -f "$name: %e s wall, %U s user, %S s sys" \
      "$VARMEM" train --config "$config" --steps "$steps" --out "$run" "${resume[@]}" --quiet \
      --set data.dir="$data" --set train.threads=1 --set train.val_every=500 "$@" \
      > "$RUNS/logs/$name.log" 2>&1 && log "train $name: finished" ) &
}

# evaluate RESULT RUN DATA [extra eval options]: RUNS/eval/RESULT.json and OUT/RESULT/ from run RUNS/RUN
evaluate() {
  local name=$1 runname=$2 data=$3; shift 3
  local save=$RUNS/eval/$name.json
  if [ -f "$save" ]; then log "eval $name: done already"; return; fi
  wait_slot
  mkdir -p "$RUNS/eval" "$RUNS/logs"
  log "eval $name on $data"
  ( /usr/bin/time -f "eval $name: %e s wall, %U s user" \
      "$VARMEM" eval "$RUNS/$runname" --data "$data" --samples "$SAMPLES" --episodes "$EPISODES" \
      --classification-episodes 1000 --likelihood-episodes 50 --tables all \
      --save "$save" --out-dir "$OUT/$name" "$@" > "$RUNS/logs/eval_$name.log" 2>&1 && log "eval $name: finished" ) &
}

data() {
  [ -f "$STROKES/manifest.json" ] || "$VARMEM" data build --source strokes --classes 1000 --seed 0 --out "$STROKES"
  [ -f "$OMNI_STRONG/manifest.json" ] || "$VARMEM" data build --source omniglot --path "$OMNI_ZIP" \
      --split alphabets --heldout-alphabet Latin --out "$OMNI_STRONG"
  [ -f "$OMNI_WEAK/manifest.json" ] || "$VARMEM" data build --source omniglot --path "$OMNI_ZIP" \
      --split characters --heldout-fraction 0.2 --split-seed 0 --out "$OMNI_WEAK"
}

STROKES_RUNS=(vma vae softattn gmn gmn_nopseudo gmn_noattn ns_c1 ns_c2 mn mn_fce seq_t8 seq_t16 seq_t32 seq_t64 draw)

train_strokes() {
  train vma configs/vma_strokes.yaml "$STROKES" "$STEPS"
  train vae configs/vae_strokes.yaml "$STROKES" "$STEPS"
  train softattn configs/softattn_strokes.yaml "$STROKES" "$STEPS"
  train gmn configs/gmn_strokes.yaml "$STROKES" "$STEPS"
  train gmn_nopseudo configs/gmn_strokes.yaml "$STROKES" "$STEPS" --set model.pseudo_inputs=false
  train gmn_noattn configs/gmn_strokes.yaml "$STROKES" "$STEPS" --set model.attention=none
  train ns_c1 configs/neural_statistician_strokes.yaml "$STROKES" "$STEPS" --set model.set_classes=1
  train ns_c2 configs/neural_statistician_strokes.yaml "$STROKES" "$STEPS" --set model.set_classes=2
  train mn configs/matching_networks_strokes.yaml "$STROKES" "$STEPS"
  train mn_fce configs/matching_networks_strokes.yaml "$STROKES" "$STEPS" --set model.fce=true
  for T in 8 16 32 64; do
    train "seq_t$T" configs/sequential_strokes.yaml "$STROKES" "$STEPS" --set model.steps=$T
  done
  train draw configs/draw_strokes.yaml "$STROKES" "$STEPS"
  wait
}

train_omniglot() {
  local over=(--set data.image_size=26)
  train omni_vma configs/vma_omniglot_small1.yaml "$OMNI_STRONG" "$OMNI_STEPS"
  train omni_vae configs/vae_strokes.yaml "$OMNI_STRONG" "$OMNI_STEPS" "${over[@]}"
  train omni_gmn configs/gmn_strokes.yaml "$OMNI_STRONG" "$OMNI_STEPS" "${over[@]}"
  train omni_ns configs/neural_statistician_strokes.yaml "$OMNI_STRONG" "$OMNI_STEPS" "${over[@]}"
  train omni_mn configs/matching_networks_strokes.yaml "$OMNI_STRONG" "$OMNI_STEPS" "${over[@]}"
  train omni_seq_strong configs/sequential_strokes.yaml "$OMNI_STRONG" "$OMNI_STEPS" "${over[@]}"
  train omni_seq_weak configs/sequential_strokes.yaml "$OMNI_WEAK" "$OMNI_STEPS" "${over[@]}"
  wait
}

eval_strokes() {
  for name in "${STROKES_RUNS[@]}"; do evaluate "$name" "$name" "$STROKES"; done
  wait
  local args=()
  for name in "${STROKES_RUNS[@]}"; do args+=("$name=$RUNS/eval/$name.json"); done
  "$VARMEM" compare "${args[@]}" --markdown --out-dir "$OUT/compare_strokes" | tee "$OUT/compare_strokes.txt"
  # transfer: trained on strokes, tested on the held-out Omniglot alphabet
  for name in vma mn; do evaluate "${name}_on_omniglot" "$name" "$OMNI_STRONG" --tables none; done
  wait
}

eval_omniglot() {
  local names=(omni_vma omni_vae omni_gmn omni_ns omni_mn omni_seq_strong)
  for name in "${names[@]}"; do evaluate "$name" "$name" "$OMNI_STRONG"; done
  evaluate omni_seq_weak omni_seq_weak "$OMNI_WEAK"
  wait
  local args=()
  for name in "${names[@]}"; do args+=("$name=$RUNS/eval/$name.json"); done
  "$VARMEM" compare "${args[@]}" --markdown --out-dir "$OUT/compare_omniglot" | tee "$OUT/compare_omniglot.txt"
}

case "${1:-all}" in
  data) data ;;
  train-strokes) data; train_strokes ;;
  train-omniglot) data; train_omniglot ;;
  eval-strokes) eval_strokes ;;
  eval-omniglot) eval_omniglot ;;
  all) data; train_strokes; eval_strokes; train_omniglot; eval_omniglot ;;
  *) echo "usage: $0 [data|train-strokes|train-omniglot|eval-strokes|eval-omniglot|all]" >&2; exit 2 ;;
esac
