#!/usr/bin/env bash
# Issue 17, "must show" 2-4: VMA recipes compared at EQUAL CPU BUDGETS (train.cpu_budget_s: the training process's
# CPU time, all its threads, validation and checkpoints included, summed over sessions: --resume continues the
# count), evaluated on one small1 Omniglot alphabet held out from all training, beside the pixel and Hausdorff
# baselines on the same episodes.
#
#   cells (BUDGET CPU-seconds each unless said; every cell uses configs/vma_omniglot_small1.yaml's model):
#     1  small1       small1's 4 other alphabets only
#     2  strokes      strokes only, STROKES_CLASSES (10^4) classes
#     3  finetune     strokes pretraining (PRETRAIN_SHARE of the budget) then small1 fine-tuning (the rest),
#                     `varmem train --init-from` (a fresh optimizer)
#     4  aug          the best of 1-3 (AUG_BASE; auto: by SELECT_TASK accuracy) with episode.train.augment
#                     (AUG_SETS, every stage of the recipe)
#     5  long         the best of 1-4 (WINNER; auto) at LONG_BUDGET (3 CPU-hours): its 1-hour run continued
#                     (LONG_EXTENDS=1; a fine-tuning keeps its 0.5-hour pretraining and fine-tunes 2.5 hours)
#     6  scale        strokes only at SCALE_CLASSES (10^3, 10^4, 10^5) classes, SCALE_BUDGET each (0.25 h),
#                     at each training seed of SCALE_SEEDS (default 0)
#
#   scripts/cpu_budget_experiments.sh dry        # every command and the cost (CPU-hours), nothing run
#   scripts/cpu_budget_experiments.sh data       # the datasets (small1 with HELDOUT held out, at 26 and 105; strokes)
#   scripts/cpu_budget_experiments.sh train      # cells 1, 2, 3 and 6
#   scripts/cpu_budget_experiments.sh scale      # cell 6 only (e.g. a second driver beside `train`)
#   scripts/cpu_budget_experiments.sh eval       # every finished run not yet evaluated, the baselines, the table
#   scripts/cpu_budget_experiments.sh aug        # cell 4 (needs the evaluations of cells 1-3 for AUG_BASE=auto)
#   scripts/cpu_budget_experiments.sh long       # cell 5 (needs the evaluations of cells 1-4 for WINNER=auto)
#   scripts/cpu_budget_experiments.sh compare    # OUT/compare_cpu_budget: the tables, scripts/plot_cpu_budget.py's pictures
#   scripts/cpu_budget_experiments.sh all        # data, train, eval, aug, eval, long, eval
#   DRY=1 scripts/cpu_budget_experiments.sh all  # = dry
#
# Resumable like scripts/wave2_experiments.sh: a finished run (final_metrics.json: its budget or its step cap
# reached) or evaluation (its JSON) is skipped; a run with checkpoints continues with --resume, its CPU count
# with it. A run's name carries its budget, so a new BUDGET starts new runs. One thread per job (JOBS jobs side
# by side; the budget is CPU time, so a loaded machine makes the runs slower, not shorter). Logs: RUNS/logs.
#
# What the budget counts (distributed/config.py, train.cpu_budget_s): the process time of `varmem train` from
# the training loop's start — steps, episode prefetch, validation (VAL_EVERY: sparse, every cell the same),
# checkpoints. Not counted: the ~3-5 CPU-s of Python/torch imports per command, dataset builds, evaluation.
# The fine-tuning cell pays two final validations (its two stages); its stages' budgets add up to BUDGET.
set -euo pipefail
cd "$(dirname "$0")/.."
VARMEM=${VARMEM:-.venv/bin/varmem}
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs/cpu_budget}
OUT=${OUT:-out/cpu_budget}
JOBS=${JOBS:-2}
CONFIG=${CONFIG:-configs/vma_omniglot_small1.yaml}   # 26×26, the paper's Omniglot networks
BUDGET=${BUDGET:-3600}                 # CPU-seconds per cell (issue 17: 1 CPU-hour)
LONG_BUDGET=${LONG_BUDGET:-10800}      # cell 5: 3 CPU-hours
SCALE_BUDGET=${SCALE_BUDGET:-900}      # cell 6: per strokes size (0.25 CPU-hour)
PRETRAIN_SHARE=${PRETRAIN_SHARE:-0.5}  # cell 3: the share of the budget spent pretraining on strokes
STEPS_CAP=${STEPS_CAP:-1000000}        # train.steps: a cap far past any budget (the budget ends the runs)
VAL_EVERY=${VAL_EVERY:-2000}           # sparse: validation counts toward the budget
CKPT_EVERY=${CKPT_EVERY:-500}          # a killed session loses (and does not count) at most this many steps
AUG_BASE=${AUG_BASE:-auto}             # cell 4: small1 | strokes | finetune | auto (the best of cells 1-3)
WINNER=${WINNER:-auto}                 # cell 5: small1 | strokes | finetune | aug-<base> | auto (the best of 1-4)
LONG_EXTENDS=${LONG_EXTENDS:-1}        # cell 5 continues the winner's 1-hour run (0: trains it again from the start)
AUG_SETS=${AUG_SETS:-"episode.train.augment.rotations=true episode.train.augment.jitter=true"}
TRAIN_SETS=${TRAIN_SETS:-}             # more --set items for every training (space-separated), e.g. train.val_episodes=8
# The task 'best' means: its accuracy by q_a or likelihood, the higher. auto chooses on the held-out alphabet's
# episodes, the ones the table reports (small1 has no alphabet to spare for a separate selection set): cell 5's
# margin over the others is then slightly optimistic; name AUG_BASE and WINNER to choose otherwise.
SELECT_TASK=${SELECT_TASK:-20way1shot_within}
# data
OMNI_ZIP=${OMNI_ZIP:-../shared/data/omniglot/images_background_small1.zip}
HELDOUT=${HELDOUT:-Latin}              # small1 alphabets: Balinese 24, Early_Aramaic 22, Greek 24, Korean 40, Latin 26
OMNI=${OMNI:-data/omniglot26-small1-no$HELDOUT}         # train: the other 4 alphabets; test: HELDOUT
OMNI105=${OMNI105:-data/omniglot105-small1-no$HELDOUT}  # the same split at 105×105, for hausdorff_native (NATIVE=1)
NATIVE=${NATIVE:-1}
STROKES_CLASSES=${STROKES_CLASSES:-10000}
SCALE_CLASSES=${SCALE_CLASSES:-"1000 10000 100000"}
SCALE_SEEDS=${SCALE_SEEDS:-0}          # cell 6's training seeds (train.seed), e.g. "0 1 2": runs c6_..._sSEED beside seed 0
STROKES_EVAL_FRACTION=${STROKES_EVAL_FRACTION:-0.05}   # strokes alphabets kept for validation only
STROKES_IMAGES=${STROKES_IMAGES:-20}
strokes_dir() { echo "${STROKES_PREFIX:-data/strokes26-c}$1"; }
strokes_sizes() { printf '%s\n' $STROKES_CLASSES $SCALE_CLASSES | sort -un; }
# evaluation on OMNI's test split (HELDOUT): seeded episodes, the same for every run
SAMPLES=${SAMPLES:-200}                # K of the NLL bound and the NLL-vs-examples table
EPISODES=${EPISODES:-50}
CLASS_EPISODES=${CLASS_EPISODES:-1000} # per task and alphabet mode (q_a, pixel, hausdorff)
LIK_EPISODES=${LIK_EPISODES:-50}       # per task and mode by likelihood: 20-way costs 20 × 20 × 10 decodes each
TASKS=${TASKS:-5x1,20x1}
# within: all of an episode's classes from one alphabet (Lake's task). The test split holds one alphabet, so
# "between" episodes would be within-alphabet episodes too (drawn by another rule): ALPHABETS=between,within
# doubles the classification cost for a second sample of the same task.
ALPHABETS=${ALPHABETS:-within}
METHODS=${METHODS:-q_a,likelihood}     # per run; the model-free baselines run once, on the same episodes:
BASELINE_METHODS=${BASELINE_METHODS:-pixel,hausdorff}   # (+ hausdorff_native with NATIVE=1)
# for the dry cost estimate only: this config's decoder on one thread. A tiny run's `varmem eval` (9,592 decodes,
# 8.2 s user with ~3 s of imports, a loaded 2-core machine) did about 1,800 per CPU-second; 1,500 allows for more.
DECODES_PER_CPU_S=${DECODES_PER_CPU_S:-1500}
DRY=${DRY:-0}
export OMP_NUM_THREADS=1

log() { echo "[$(date +%H:%M:%S)] $*"; }
wait_slot() { [ "$DRY" = 1 ] || while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done; }
show() { printf '  $'; printf ' %q' "$@"; printf '\n'; }
# run CMD...: the command (printed in dry mode)
run() { if [ "$DRY" = 1 ]; then show "$@"; else "$@"; fi; }
secs() { "$PYTHON" -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2])))" "$1" "$2"; }

TRAIN_CPU=0    # dry mode: the budgets of the runs it would start (CPU-seconds)
EVALS=0

# train_one NAME DATA BUDGET [varmem train options...]: one budgeted run, in the foreground (a job calls it)
train_one() {
  local name=$1 data=$2 budget=$3; shift 3
  local run=$RUNS/$name args=("$@") item
  for item in $TRAIN_SETS; do args+=(--set "$item"); done
  if [ -f "$run/final_metrics.json" ]; then log "train $name: done already"; return 0; fi
  if [ "$DRY" != 1 ] && pgrep -f -- "--out $run " >/dev/null; then  # a second driver: leave it (and a fine-
    log "train $name: running in another process, skipped"; return 1  # tuning that needs it) to the first
  fi
  if ls "$run"/checkpoints/*.pt >/dev/null 2>&1; then  # --resume: the run's recorded --init-from wins
    local kept=() i=0
    while [ $i -lt ${#args[@]} ]; do
      if [ "${args[$i]}" = --init-from ]; then i=$((i + 2)); else kept+=("${args[$i]}"); i=$((i + 1)); fi
    done
    args=("${kept[@]}" --resume)
  fi
  TRAIN_CPU=$((TRAIN_CPU + budget))
  log "train $name on $data: $budget CPU-s${args[*]:+ (${args[*]})}"
  mkdir -p "$RUNS/logs"
  if [ "$DRY" = 1 ]; then
    show "$VARMEM" train --config "$CONFIG" --cpu-budget "$budget" --steps "$STEPS_CAP" --out "$run" --quiet \
      --set data.dir="$data" --set train.threads=1 --set train.val_every="$VAL_EVERY" \
      --set train.checkpoint_every="$CKPT_EVERY" "${args[@]}"
    return 0
  fi
  /usr/bin/time -f "$name: %e s wall, %U s user, %S s sys" \
    "$VARMEM" train --config "$CONFIG" --cpu-budget "$budget" --steps "$STEPS_CAP" --out "$run" --quiet \
    --set data.dir="$data" --set train.threads=1 --set train.val_every="$VAL_EVERY" \
    --set train.checkpoint_every="$CKPT_EVERY" "${args[@]}" > "$RUNS/logs/$name.log" 2>&1 \
    && log "train $name: finished ($("$PYTHON" -c "import json,sys; f=json.load(open(sys.argv[1])); \
print(f'step {f[\"step\"]}, {f[\"cpu_s\"]:.0f} CPU-s, stopped by {f[\"stopped_by\"]}')" "$run/final_metrics.json"))" \
    || { log "train $name: FAILED, see $RUNS/logs/$name.log"; return 1; }
}

aug_args() { local a; for a in $AUG_SETS; do printf -- '--set\n%s\n' "$a"; done; }

# recipe CELL KIND BUDGET [aug]: the runs of one cell, as one job (a fine-tuning's stages in order); the cell's
# evaluated run is RUNS/CELL (a fine-tuning's pretraining: RUNS/CELL_pre)
recipe() {
  local cell=$1 kind=$2 budget=$3 aug=${4:-}
  local extra=()
  [ -n "$aug" ] && mapfile -t extra < <(aug_args)
  case "$kind" in
    small1) train_one "$cell" "$OMNI" "$budget" "${extra[@]}" ;;
    strokes) train_one "$cell" "$(strokes_dir "$STROKES_CLASSES")" "$budget" "${extra[@]}" ;;
    strokes*) train_one "$cell" "$(strokes_dir "${kind#strokes}")" "$budget" "${extra[@]}" ;;  # strokes1000 ...
    finetune)
      local pre ft
      pre=$(secs "$budget" "$PRETRAIN_SHARE"); ft=$((budget - pre))
      train_one "${cell}_pre" "$(strokes_dir "$STROKES_CLASSES")" "$pre" "${extra[@]}" || return 1
      train_one "$cell" "$OMNI" "$ft" --init-from "$RUNS/${cell}_pre" "${extra[@]}" ;;
    *) echo "recipe $cell: unknown kind $kind (small1, strokes, strokesN, finetune)" >&2; return 2 ;;
  esac
}

job() {  # job CELL KIND BUDGET [aug]: recipe in the background (JOBS at a time); in the foreground in dry mode
  if [ "$DRY" = 1 ]; then recipe "$@"; return; fi
  wait_slot
  ( recipe "$@" ) &
}

data() {
  local n
  [ -f "$OMNI/manifest.json" ] || run "$VARMEM" data build --source omniglot --path "$OMNI_ZIP" --split alphabets \
      --heldout-alphabet "$HELDOUT" --out "$OMNI" --quiet
  if [ "$NATIVE" = 1 ] && [ ! -f "$OMNI105/manifest.json" ]; then
    run "$VARMEM" data build --source omniglot --path "$OMNI_ZIP" --split alphabets --heldout-alphabet "$HELDOUT" \
      --size 105 --out "$OMNI105" --quiet
  fi
  for n in $(strokes_sizes); do
    [ -f "$(strokes_dir "$n")/manifest.json" ] || run "$VARMEM" data build --source strokes --classes "$n" --seed 0 \
        --images-per-class "$STROKES_IMAGES" --evaluation-fraction "$STROKES_EVAL_FRACTION" --out "$(strokes_dir "$n")" --quiet
  done
  # within-alphabet 20-way episodes need 20 characters of HELDOUT
  if [ "$DRY" != 1 ]; then
    "$PYTHON" - "$OMNI" <<'EOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
test = m["splits"]["test"]
assert test["classes"] >= 20, f"{sys.argv[1]}: the held-out alphabet has {test['classes']} characters, 20-way needs 20"
EOF
  fi
}

# cell names carry their budget: a new BUDGET starts new runs
c1() { echo "c1_small1_$BUDGET"; }
c2() { echo "c2_strokes${STROKES_CLASSES}_$BUDGET"; }
c3() { echo "c3_finetune_$BUDGET"; }
c4() { echo "c4_aug_${1}_$BUDGET"; }
c6() { echo "c6_strokes${1}_$SCALE_BUDGET${2:+_s$2}"; }  # c6 N [SEED]: seed 0 unsuffixed
kind_of() { case "$1" in small1) echo small1 ;; strokes) echo strokes ;; finetune) echo finetune ;; esac; }

train_cells() {
  job "$(c1)" small1 "$BUDGET"
  job "$(c2)" strokes "$BUDGET"
  job "$(c3)" finetune "$BUDGET"
  scale_jobs
  [ "$DRY" = 1 ] || wait
}

scale_jobs() {  # cell 6's runs as jobs: every size at seed 0, then every size at each other seed
  local n seed
  for n in $SCALE_CLASSES; do job "$(c6 "$n")" "strokes$n" "$SCALE_BUDGET"; done
  for seed in $SCALE_SEEDS; do  # replicates: another initialization and another stream of training episodes
    [ "$seed" = 0 ] && continue
    for n in $SCALE_CLASSES; do seed_job "$(c6 "$n" "$seed")" "$(strokes_dir "$n")" "$SCALE_BUDGET" "$seed"; done
  done
}

scale_cells() {  # cell 6 alone (a second driver beside `train` can run it: each skips the other's runs)
  scale_jobs
  [ "$DRY" = 1 ] || wait
}

seed_job() {  # seed_job NAME DATA BUDGET SEED: a strokes-only run at train.seed SEED, as a job
  if [ "$DRY" = 1 ]; then train_one "$1" "$2" "$3" --set train.seed="$4"; return; fi
  wait_slot
  ( train_one "$1" "$2" "$3" --set train.seed="$4" ) &
}

# best NAME=KIND...: the KIND whose run's evaluation has the highest SELECT_TASK accuracy (q_a or likelihood)
best() {
  "$PYTHON" - "$RUNS/eval" "$SELECT_TASK" "$@" <<'EOF'
import json, sys
from pathlib import Path
folder, task, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
scores = {}
for pair in pairs:
    name, kind = pair.split("=")
    path = folder / f"{name}.json"
    if not path.is_file():
        sys.exit(f"best: {path} is missing: evaluate {name} first (scripts/cpu_budget_experiments.sh eval)")
    result = json.loads(path.read_text())  # `varmem eval --save`: the protocol's tables under "protocol"
    table = result.get("protocol", result).get("classification", {}).get(task, {})
    accs = {m: table[m]["accuracy"] for m in ("q_a", "likelihood") if m in table}
    if not accs:
        sys.exit(f"best: {path} has no {task} accuracy by q_a or likelihood")
    scores[kind] = max(accs.values())
    print(f"  {name}: {task} " + ", ".join(f"{m} {a:.3f}" for m, a in accs.items()), file=sys.stderr)
print(max(scores, key=scores.get))
EOF
}

aug_cell() {
  local base=$AUG_BASE
  if [ "$base" = auto ]; then
    if [ "$DRY" = 1 ]; then base=finetune; log "cell 4: AUG_BASE=auto chooses after the evaluations of cells 1-3; shown for finetune"
    else base=$(best "$(c1)=small1" "$(c2)=strokes" "$(c3)=finetune"); log "cell 4: the best of cells 1-3 is $base"; fi
  fi
  job "$(c4 "$base")" "$(kind_of "$base")" "$BUDGET" aug
  [ "$DRY" = 1 ] || wait
}

long_cell() {
  local winner=$WINNER pairs=("$(c1)=small1" "$(c2)=strokes" "$(c3)=finetune") b
  for b in small1 strokes finetune; do [ -d "$RUNS/$(c4 "$b")" ] && pairs+=("$(c4 "$b")=aug-$b"); done
  if [ "$winner" = auto ]; then
    if [ "$DRY" = 1 ]; then winner=aug-finetune; log "cell 5: WINNER=auto chooses after the evaluations of cells 1-4; shown for aug-finetune"
    else winner=$(best "${pairs[@]}"); log "cell 5: the best of cells 1-4 is $winner"; fi
  fi
  local base=${winner#aug-} aug=
  [ "$base" != "$winner" ] && aug=aug
  if [ "$LONG_EXTENDS" = 1 ]; then
    local from
    case "$winner" in aug-*) from=$(c4 "$base") ;; small1) from=$(c1) ;; strokes) from=$(c2) ;; finetune) from=$(c3) ;; esac
    if [ "$DRY" = 1 ]; then extend "$from" "c5_${winner}_$LONG_BUDGET" "$base" "$LONG_BUDGET" $aug
    else wait_slot; ( extend "$from" "c5_${winner}_$LONG_BUDGET" "$base" "$LONG_BUDGET" $aug ) & fi
  else
    job "c5_${winner}_$LONG_BUDGET" "$(kind_of "$base")" "$LONG_BUDGET" $aug
  fi
  [ "$DRY" = 1 ] || wait
}

# extend FROM NAME KIND BUDGET [aug]: RUNS/NAME continues the finished run RUNS/FROM (its last stage: a fine-tuning's
# small1 stage) to BUDGET CPU-seconds in all. The learning rate is constant and train.steps a cap far past any
# budget, so a BUDGET run's first BUDGET(FROM) seconds are FROM's run: the copy is resumed (--resume restores the
# optimizer, sampler and CPU count exactly; tests/distributed/test_resume*.py), not retrained. The copy is made
# in NAME.partial and renamed; FROM is not touched. A fine-tuning keeps its pretraining's share of the 1-hour cell.
extend() {
  local from=$1 name=$2 kind=$3 budget=$4 aug=${5:-} data extra=()
  [ -n "$aug" ] && mapfile -t extra < <(aug_args)
  case "$kind" in small1|finetune) data=$OMNI ;; strokes) data=$(strokes_dir "$STROKES_CLASSES") ;; esac
  if [ "$DRY" != 1 ] && [ ! -d "$RUNS/$name" ]; then
    [ -f "$RUNS/$from/final_metrics.json" ] || { log "extend $name: $RUNS/$from has not finished"; return 1; }
    local last
    last=$(ls "$RUNS/$from"/checkpoints/ckpt-*.pt | sort | tail -1)
    rm -rf "$RUNS/$name.partial"; mkdir -p "$RUNS/$name.partial/checkpoints"
    cp "$RUNS/$from/config.yaml" "$RUNS/$from/metrics.jsonl" "$RUNS/$name.partial/"
    cp "$last" "$RUNS/$name.partial/checkpoints/"
    [ -d "$RUNS/$from/tensorboard" ] && cp -r "$RUNS/$from/tensorboard" "$RUNS/$name.partial/"
    mv "$RUNS/$name.partial" "$RUNS/$name"
    log "extend $name: continues $from from $(basename "$last")"
  elif [ "$DRY" = 1 ]; then
    show cp -r "$RUNS/$from" "$RUNS/$name"  # (config.yaml, metrics.jsonl, the newest checkpoint, tensorboard)
  fi
  train_one "$name" "$data" "$budget" "${extra[@]}"
  if [ "$DRY" = 1 ]; then TRAIN_CPU=$((TRAIN_CPU - BUDGET)); fi  # the first BUDGET seconds are FROM's
}

# evaluate NAME: RUNS/eval/NAME.json from the finished run RUNS/NAME, on OMNI's test split (HELDOUT)
EVAL_COMMON=(--data "$OMNI" --split test --samples "$SAMPLES" --episodes "$EPISODES"
             --classification-episodes "$CLASS_EPISODES" --likelihood-episodes "$LIK_EPISODES"
             --tasks "$TASKS" --alphabets "$ALPHABETS" --tables examples)  # NLL bound + NLL vs examples
evaluate() {
  local name=$1; shift
  local save=$RUNS/eval/$name.json
  if [ -f "$save" ]; then log "eval $name: done already"; return 0; fi
  if [ "$DRY" != 1 ] && [ ! -f "$RUNS/$name/final_metrics.json" ]; then log "eval $name: run not finished, skipped"; return 0; fi
  EVALS=$((EVALS + 1))
  mkdir -p "$RUNS/eval" "$RUNS/logs"
  if [ "$DRY" = 1 ]; then show "$VARMEM" eval "$RUNS/$name" "${EVAL_COMMON[@]}" --save "$save" --out-dir "$OUT/$name" "$@"; return 0; fi
  wait_slot
  log "eval $name"
  ( /usr/bin/time -f "eval $name: %e s wall, %U s user" "$VARMEM" eval "$RUNS/$name" "${EVAL_COMMON[@]}" \
      --save "$save" --out-dir "$OUT/$name" "$@" > "$RUNS/logs/eval_$name.log" 2>&1 \
      && log "eval $name: finished" || log "eval $name: FAILED, see $RUNS/logs/eval_$name.log" ) &
}

# the methods `varmem eval` accepts among a comma list (hausdorff was added to it in issue 17)
accepted() {
  local list=$1 m out=() help
  help=$("$VARMEM" eval --help 2>/dev/null || true)
  for m in ${list//,/ }; do
    if grep -q -- "$m" <<<"$help"; then out+=("$m"); else log "varmem eval has no method $m: left out" >&2; fi
  done
  local IFS=,; echo "${out[*]}"
}

evaluated_runs() {  # every cell's evaluated run (not a fine-tuning's pretraining), in table order
  local n b
  echo "$(c1)"; echo "$(c2)"; echo "$(c3)"
  for b in small1 strokes finetune; do echo "$(c4 "$b")"; done
  for b in small1 strokes finetune aug-small1 aug-strokes aug-finetune; do echo "c5_${b}_$LONG_BUDGET"; done
  for n in $SCALE_CLASSES; do echo "$(c6 "$n")"; done
  local seed
  for seed in $SCALE_SEEDS; do [ "$seed" = 0 ] || for n in $SCALE_CLASSES; do echo "$(c6 "$n" "$seed")"; done; done
}

eval_all() {
  local name methods baseline first=
  methods=$(accepted "$METHODS")
  for name in $(evaluated_runs); do
    if [ "$DRY" = 1 ] || [ -f "$RUNS/$name/final_metrics.json" ]; then
      case "$name" in c4_*|c5_*) [ "$DRY" = 1 ] && [[ $name != *_aug-finetune_* && $name != c4_aug_finetune_* ]] && continue ;; esac
      evaluate "$name" --methods "$methods" --no-pictures
      first=${first:-$name}
    fi
  done
  # the model-free baselines once, on the same seeded episodes (any run: they do not read the model); no NLL tables.
  # Twice: on CLASS_EPISODES episodes (q_a's), and on the first LIK_EPISODES of them (likelihood's), so that every
  # method of the table has a baseline on its own episodes (baselines_lik)
  if [ -n "$first" ]; then
    baseline=$BASELINE_METHODS
    local native=() label episodes
    if [ "$NATIVE" = 1 ]; then baseline+=",hausdorff_native"; native=(--hausdorff-data "$OMNI105"); fi
    baseline=$(accepted "$baseline")
    for label in baselines baselines_lik; do
      episodes=$CLASS_EPISODES; [ "$label" = baselines_lik ] && episodes=$LIK_EPISODES
      local cmd=("$VARMEM" eval "$RUNS/$first" "${EVAL_COMMON[@]}" --classification-episodes "$episodes"
                 --methods "$baseline" "${native[@]}" --tables none --bound-episodes 2 --no-pictures
                 --save "$RUNS/eval/$label.json")
      if [ "$DRY" = 1 ]; then show "${cmd[@]}"; continue; fi
      [ -f "$RUNS/eval/$label.json" ] && continue
      mkdir -p "$RUNS/eval"
      wait_slot
      log "eval $label ($baseline, $episodes episodes per task) on the episodes of every run"
      ( /usr/bin/time -f "eval $label: %e s wall, %U s user" "${cmd[@]}" > "$RUNS/logs/eval_$label.log" 2>&1 \
          && log "eval $label: finished" || log "eval $label: FAILED, see $RUNS/logs/eval_$label.log" ) &
    done
  fi
  [ "$DRY" = 1 ] || wait
  compare
}

compare() {
  local args=() name
  for name in baselines baselines_lik $(evaluated_runs); do
    [ -f "$RUNS/eval/$name.json" ] && args+=("$name=$RUNS/eval/$name.json")
  done
  if [ "$DRY" = 1 ]; then show "$VARMEM" compare "LABEL=$RUNS/eval/LABEL.json ..." --markdown --out-dir "$OUT/compare_cpu_budget"; return 0; fi
  if [ ${#args[@]} -eq 0 ]; then log "compare: no evaluation yet"; return 0; fi
  mkdir -p "$OUT"
  "$VARMEM" compare "${args[@]}" --markdown --out-dir "$OUT/compare_cpu_budget" > "$OUT/compare_cpu_budget.txt" 2>&1 \
    || log "compare: FAILED (the message is in $OUT/compare_cpu_budget.txt)"
  cpu_table >> "$OUT/compare_cpu_budget.txt"
  "$PYTHON" scripts/plot_cpu_budget.py "$RUNS/eval" "$OUT/compare_cpu_budget" >> "$OUT/compare_cpu_budget.txt" 2>&1 \
    || log "plots: FAILED (the message is in $OUT/compare_cpu_budget.txt)"
  cat "$OUT/compare_cpu_budget.txt"
}

cpu_table() {  # each run's steps and CPU seconds (final_metrics.json): what each cell bought with its budget
  "$PYTHON" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
print("\n| run | steps | CPU-s | budget | stopped by | val NLL bound |\n|---|---|---|---|---|---|")
for final in sorted(runs.glob("*/final_metrics.json")):
    f = json.loads(final.read_text())
    nll = f.get("val", {}).get("nll_bound")
    print(f"| {final.parent.name} | {f['step']} | {f.get('cpu_s', float('nan')):.0f} | {f.get('cpu_budget_s')} | "
          f"{f.get('stopped_by')} | {'' if nll is None else f'{nll:.2f}'} |")
EOF
}

dry() {
  DRY=1
  local n builds=0 eval_decodes eval_cpu
  echo "== data"; data
  echo "== cells 1, 2, 3 and 6 (train)"; train_cells
  echo "== cell 4 (aug)"; aug_cell
  echo "== cell 5 (long)"; long_cell
  echo "== evaluation"; eval_all
  # evaluation, per run: the bound (EPISODES × 32 targets × (SAMPLES + 4)), NLL vs examples (EPISODES × 7 × (SAMPLES + 4)),
  # classification by likelihood (LIK_EPISODES × ways² × 10 per task and alphabet mode); q_a costs encodes only
  eval_decodes=$("$PYTHON" -c "
import sys
S, E, L, tasks, modes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ways = [int(t.split('x')[0]) for t in tasks.split(',')]
print(E * 32 * (S + 4) + E * 7 * (S + 4) + L * sum(w * w * 10 for w in ways) * len(modes.split(',')))" \
    "$SAMPLES" "$EPISODES" "$LIK_EPISODES" "$TASKS" "$ALPHABETS")
  eval_cpu=$((EVALS * eval_decodes / DECODES_PER_CPU_S))
  for n in $(strokes_sizes); do builds=$((builds + n / 125)); done  # ~8 ms of CPU per class of 20 images (300 classes: 5 s, loaded)
  "$PYTHON" - "$TRAIN_CPU" "$eval_cpu" "$EVALS" "$eval_decodes" "$builds" "$JOBS" "$DECODES_PER_CPU_S" "$CLASS_EPISODES" "$NATIVE" "$(tr ',' '\n' <<<"$ALPHABETS" | wc -l)" <<'EOF'
import sys
train, ev, evals, decodes, builds, jobs, rate, episodes, native, modes = (float(a) for a in sys.argv[1:])
native_s = modes * episodes * 0.6 if native else 0  # hausdorff_native: ~0.4-0.75 s per 20-way episode at 105×105
base = modes * episodes * 0.012 + native_s          # pixel + hausdorff at 26×26: ~10 ms per 20-way episode
total = train + ev + builds + base
h = lambda s: f"{s / 3600:.2f} CPU-h"
print(f"""
== cost (CPU time; the training budgets are exact up to one step, a final validation and ~4 CPU-s of imports per run)
  training       {h(train)}  (the budgets of the runs above)
  evaluation     {h(ev)}  ({evals:.0f} runs × {decodes / 1e6:.2f} M decodes at DECODES_PER_CPU_S={rate:.0f}: an estimate)
  baselines      {h(base)}  (pixel, hausdorff{', hausdorff_native' if native else ''}: {episodes:.0f} episodes per task and mode)
  datasets       {h(builds)}  (strokes builds, an estimate)
  in all         {h(total)}: about {total / 3600 / jobs:.1f} h of wall time with JOBS={jobs:.0f} on otherwise idle cores""")
EOF
}

case "${1:-all}" in
  dry) dry ;;
  data) data ;;
  train) data; train_cells ;;
  scale) data; scale_cells ;;
  eval) eval_all ;;
  aug) aug_cell ;;
  long) long_cell ;;
  compare) compare ;;
  all) if [ "$DRY" = 1 ]; then dry; else data; train_cells; eval_all; aug_cell; eval_all; long_cell; eval_all; fi ;;
  *) echo "usage: $0 [dry|data|train|scale|eval|aug|long|compare|all]" >&2; exit 2 ;;
esac
