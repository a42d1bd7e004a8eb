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
OMNI_SEQ_STEPS=${OMNI_SEQ_STEPS:-1500}   # the sequential model costs ~4× a VMA step per image on the CPU
SEQ_CKPT=${SEQ_CKPT:-500}       # the T sweep's checkpoint interval: NLL vs T at every multiple
JOBS=${JOBS:-2}
STROKES=${STROKES:-data/strokes26}
OMNI_ZIP=${OMNI_ZIP:-../shared/data/omniglot/images_background_small1.zip}
OMNI_STRONG=${OMNI_STRONG:-data/omniglot26-small1}        # Latin held out (the strong split: a whole alphabet)
OMNI_WEAK=${OMNI_WEAK:-data/omniglot26-small1-weak}       # 20% of every alphabet's characters held out (weak)
SAMPLES=${SAMPLES:-200}         # K of the NLL tables (the seeds: 1,000)
EPISODES=${EPISODES:-20}
LIK_EPISODES=${LIK_EPISODES:-20}  # episodes per task of classification by likelihood (20-way: 20 × 20 × K=10 decodes per query)
export OMP_NUM_THREADS=1

log() { echo "[$(date +%H:%M:%S)] $*"; }

wait_slot() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done; }

# train NAME CONFIG DATA STEPS [--set ...]
train() {
  local name=$1 config=$2 data=$3 steps=$4; shift 4
  local run=$RUNS/$name
  if [ -f "$run/final_metrics.json" ]; then log "train $name: done already"; return; fi
  local resume=()
  wait_slot  # then check: another driver may have started this run while this one waited for a slot
  if pgrep -f -- "--out $run " >/dev/null; then log "train $name: running in another process, skipped"; return; fi
  if [ -f "$run/final_metrics.json" ]; then log "train $name: done already"; return; fi
  if ls "$run"/checkpoints/*.pt >/dev/null 2>&1; then resume=(--resume); fi
  log "train $name ($config, $steps steps${resume:+, resumed})"
  mkdir -p "$RUNS/logs"
  ( /usr/bin/time -f "$name: %e s wall, %U s user, %S s sys" \
      "$VARMEM" train --config "$config" --steps "$steps" --out "$run" "${resume[@]}" --quiet \
      --set data.dir="$data" --set train.threads=1 --set train.val_every=500 "$@" \
      > "$RUNS/logs/$name.log" 2>&1 && log "train $name: finished" ) &
}

# evaluate RESULT RUN DATA [extra eval options]: RUNS/eval/RESULT.json and OUT/RESULT/ from run RUNS/RUN.
# A run that has not finished (no final_metrics.json) is skipped with a message: run the mode again later.
# The defaults here are the tables the issues ask for (the NLL-vs-classes table is left out: --tables).
evaluate() {
  local name=$1 runname=$2 data=$3; shift 3
  local save=$RUNS/eval/$name.json
  if [ -f "$save" ]; then log "eval $name: done already"; return; fi
  if [ ! -f "$RUNS/$runname/final_metrics.json" ] && [[ " $* " != *" --checkpoint "* ]]; then
    log "eval $name: run $runname has not finished, skipped"; return
  fi
  wait_slot  # then check: another driver may be evaluating it (this driver's own jobs have finished or hold other names)
  if pgrep -f -- "--save $save " >/dev/null; then log "eval $name: running in another process, skipped"; return; fi
  mkdir -p "$RUNS/eval" "$RUNS/logs"
  log "eval $name on $data"
  ( /usr/bin/time -f "eval $name: %e s wall, %U s user" \
      "$VARMEM" eval "$RUNS/$runname" --data "$data" --samples "$SAMPLES" --episodes "$EPISODES" \
      --classification-episodes 1000 --likelihood-episodes "$LIK_EPISODES" --tables examples,conditioning \
      --save "$save" --out-dir "$OUT/$name" "$@" > "$RUNS/logs/eval_$name.log" 2>&1 && log "eval $name: finished" ) &
}

# The sequential family decodes T steps per sample (T = 32: ~1/4 of a VAE's decodes/s on one thread), so its
# evaluations are trimmed: the T sweep gets the headline bound and pictures; T = 32 (the config's) also the
# NLL-vs-examples table and 5/20-way 1-shot by likelihood on LIK_EPISODES_SEQ episodes (K = 5).
SEQ_MAIN=(--tables examples --tasks 5x1,20x1 --likelihood-episodes "${LIK_EPISODES_SEQ:-10}" --likelihood-samples 5)
SEQ_SWEEP=(--tables none --tasks none)
# The ablations and the second Neural Statistician enter the talk's table only (no classification).
TABLE_ONLY=(--tables conditioning --tasks none)

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
  # NLL vs T: a checkpoint every SEQ_CKPT steps, all kept, each evaluated on the same episodes (paired)
  for T in 8 16 32 64; do
    train "seq_t$T" configs/sequential_strokes.yaml "$STROKES" "$STEPS" --set model.steps=$T \
        --set train.checkpoint_every="$SEQ_CKPT" --set train.keep_checkpoints=$((STEPS / SEQ_CKPT))
  done
  for seed in 1 2; do  # the training-seed spread of one T (the sweep is one run per T)
    train "seq_t8_seed$seed" configs/sequential_strokes.yaml "$STROKES" "$STEPS" --set model.steps=8 --set train.seed=$seed
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
  train omni_seq_strong configs/sequential_strokes.yaml "$OMNI_STRONG" "$OMNI_SEQ_STEPS" "${over[@]}"
  train omni_seq_weak configs/sequential_strokes.yaml "$OMNI_WEAK" "$OMNI_SEQ_STEPS" "${over[@]}"
  wait
}

eval_strokes() {
  for name in vma vae gmn ns_c1 mn; do evaluate "$name" "$name" "$STROKES"; done
  evaluate mn_fce mn_fce "$STROKES" --tasks 5x1,20x1   # FCE on vs off on the same episodes
  evaluate softattn softattn "$STROKES" --tables examples
  for name in gmn_nopseudo gmn_noattn ns_c2; do evaluate "$name" "$name" "$STROKES" "${TABLE_ONLY[@]}"; done
  evaluate seq_t32 seq_t32 "$STROKES" "${SEQ_MAIN[@]}"
  for name in seq_t8 seq_t16 draw; do evaluate "$name" "$name" "$STROKES" "${SEQ_SWEEP[@]}"; done
  # NLL vs T at equal steps: every T at each of its checkpoints before the last, on the same episodes
  # (the headline bound's per-episode values make `varmem compare` pair them)
  local step ckpt
  for T in 8 16 32 64; do
    for ((step = SEQ_CKPT; step < STEPS; step += SEQ_CKPT)); do
      ckpt=$(printf '%s/seq_t%s/checkpoints/ckpt-%08d.pt' "$RUNS" "$T" "$step")
      [ -f "$ckpt" ] || continue
      evaluate "seq_t${T}_s$step" "seq_t$T" "$STROKES" "${SEQ_SWEEP[@]}" --no-pictures --checkpoint "$ckpt"
    done
  done
  evaluate seq_t64 seq_t64 "$STROKES" "${SEQ_SWEEP[@]}"
  for seed in 1 2; do evaluate "seq_t8_seed$seed" "seq_t8_seed$seed" "$STROKES" "${SEQ_SWEEP[@]}" --no-pictures; done
  # transfer: trained on strokes, tested on the held-out Omniglot alphabet
  # (the held-out split is one alphabet, Latin: between-alphabet episodes would be within-alphabet ones)
  for name in vma mn; do
    evaluate "${name}_on_omniglot" "$name" "$OMNI_STRONG" --tables none --alphabets within --no-pictures
  done
  wait
  compare strokes "${STROKES_RUNS[@]}"
  # NLL vs T: one comparison per checkpoint step, T = 32 (the config's) first: the others' paired differences
  for ((step = SEQ_CKPT; step < STEPS; step += SEQ_CKPT)); do
    compare "seq_t_s$step" "seq_t32_s$step" "seq_t8_s$step" "seq_t16_s$step" "seq_t64_s$step"
  done
  compare "seq_t_s$STEPS" seq_t32 seq_t8 seq_t16 seq_t64 seq_t8_seed1 seq_t8_seed2
}

eval_omniglot() {
  # The strong split's held-out split is one alphabet (Latin, 26 characters): every episode is within it,
  # so the tasks run once, as within-alphabet episodes (--alphabets within).
  local names=(omni_vma omni_vae omni_gmn omni_ns omni_mn)
  for name in "${names[@]}"; do evaluate "$name" "$name" "$OMNI_STRONG" --alphabets within; done
  evaluate omni_seq_strong omni_seq_strong "$OMNI_STRONG" "${SEQ_MAIN[@]}" --alphabets within
  evaluate omni_seq_weak omni_seq_weak "$OMNI_WEAK" "${SEQ_MAIN[@]}"
  wait
  compare omniglot "${names[@]}" omni_seq_strong
}

# compare TAG NAME...: one table of every finished evaluation among NAME... (OUT/compare_TAG/)
compare() {
  local tag=$1; shift
  local args=()
  for name in "$@"; do [ -f "$RUNS/eval/$name.json" ] && args+=("$name=$RUNS/eval/$name.json"); done
  if [ ${#args[@]} -eq 0 ]; then log "compare $tag: no evaluation yet, skipped"; return; fi
  "$VARMEM" compare "${args[@]}" --markdown --out-dir "$OUT/compare_$tag" | tee "$OUT/compare_$tag.txt"
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
