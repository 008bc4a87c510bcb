#!/usr/bin/env bash
# The reproduction study at CPU scale: does codistillation pay, and which defaults does it
# support? On the local gettext corpus (a fraction of it, where models overfit), with the
# same model, batch B = TOKENS tokens per worker and UPDATES updates for every run, over SEEDS:
#
#   baseline            all-reduce of 2 workers (batch 2B, label smoothing 0.1), as its exact
#                       single-process equivalent (--update-freq 2);
#   control[-dDROP]     the codistilled model with its peer removed: one model, batch B, plain
#                       cross-entropy, at each dropout of CONTROL_DROPOUTS (the claims use the
#                       best of them, so no gain comes from a weakened control);
#   codistill-*         pairs of codistilled models (batch B each, no label smoothing), one per
#                       line of GRID: alpha0, gamma (1 = constant alpha), interval, burn-in, loss,
#                       and optionally the snapshot dtype (default fp16).
#
# Then fairseq-codistill-report --study writes STUDY_DIR/report/study.md: mean and spread over
# seeds, curves, and the paper's five claims for the REGIME line of the grid.
#
#   bash recipes/study.sh                        # ~100 min on 2 cores in bf16 (see the README)
#   SEEDS="1 2 3" bash recipes/study.sh          # a third seed: only the new runs train
#   DEVICE=cuda bash recipes/study.sh            # the same study on a GPU
#
# Finished runs are skipped when the script runs again with the same settings. Every knob of
# recipes/gettext_common.sh (TRAIN_FRACTION, UPDATES, TOKENS, DROPOUT, LR, PRECISION ...)
# applies; fairseq's logs are STUDY_DIR/runs/*/seed*/{train.log,model*/train.log}.
set -euo pipefail

STUDY_DIR=${STUDY_DIR:-study}
SEEDS=${SEEDS:-1 2}
# Processes at once: one single-threaded process per core on a CPU (a pair takes two).
if [[ "${DEVICE:-cpu}" == cuda ]]; then SLOTS=${SLOTS:-4}; else SLOTS=${SLOTS:-$(nproc)}; fi
CONTROL_DROPOUTS=${CONTROL_DROPOUTS:-0.1 0.3}
BASELINE=${BASELINE:-1}              # 0: no all-reduce baseline (a check of the regime alone)
# One pair per line and seed, in this order. The regime first, then what each claim needs:
# the interval at 0.5x and 4x, a constant alpha; then the other hypotheses.
# name             alpha0 gamma interval burn-in loss [snapshot]
GRID_DEFAULT="
a0.1-k40           0.1    1.1   40       0       mse
a0.1-k20           0.1    1.1   20       0       mse
a0.1-k160          0.1    1.1   160      0       mse
a0.1-k40-const     0.1    1     40       0       mse
a0.1-k40-int8      0.1    1.1   40       0       mse  int8
a0.3-k40           0.3    1.1   40       0       mse
a0.1-k40-burn120   0.1    1.1   40       120     mse
a0.1-k40-kl        0.1    1.1   40       0       kl
a0.01-k40-kl       0.01   1.1   40       0       kl
"
GRID=${GRID:-$GRID_DEFAULT}
REGIME=${REGIME:-a0.1-k40}           # the grid line whose settings become the defaults

# shellcheck source=recipes/gettext_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gettext_common.sh"
RUNS=$STUDY_DIR/runs
SAVE=0   # the study reads only the logs
START=$SECONDS

say() { printf '[study %dm%02ds] %s\n' $(( (SECONDS - START) / 60 )) $(( (SECONDS - START) % 60 )) "$*"; }

# A small scheduler: schedule SLOTS_NEEDED LABEL CMD... starts CMD in the background once
# that many slots are free. Failures are counted, not fatal: the other runs go on.
declare -A SLOTS_OF LABEL_OF
USED=0
FAILED=0
reap_one() {
    local pid
    if wait -n -p pid; then
        say "done: ${LABEL_OF[$pid]}"
    else
        say "FAILED: ${LABEL_OF[$pid]} (its log is in its run directory)"
        FAILED=$(( FAILED + 1 ))
    fi
    USED=$(( USED - SLOTS_OF[$pid] ))
    unset "SLOTS_OF[$pid]" "LABEL_OF[$pid]"
}
schedule() {
    local need=$1 label=$2
    shift 2
    while (( USED > 0 && USED + need > SLOTS )); do reap_one; done
    THREADS=$need "$@" &
    SLOTS_OF[$!]=$need
    LABEL_OF[$!]=$label
    USED=$(( USED + need ))
}

# describe DIR KIND SEED [key value]...: DIR/study.json, what the report groups runs by.
describe() {
    local dir=$1 group=$2 kind=$3 seed=$4
    shift 4
    mkdir -p "$dir"
    "$PYTHON" - "$dir/study.json" "$group" "$kind" "$seed" "$@" <<'EOF'
import json, sys
path, group, kind, seed, *pairs = sys.argv[1:]
meta = {"group": group, "kind": kind, "seed": int(seed)}
for key, value in zip(pairs[::2], pairs[1::2]):
    try:
        meta[key] = json.loads(value)
    except ValueError:
        meta[key] = value
with open(path + ".tmp", "w") as f:
    json.dump(meta, f)
import os; os.replace(path + ".tmp", path)
EOF
}

run_baseline() {
    local seed=$1 dir=$RUNS/baseline/seed$1
    train_baseline "$dir" "$seed"
    describe "$dir" baseline baseline "$seed" dropout "$DROPOUT"
}

run_control() {
    local seed=$1 dropout=$2 group=control
    [[ "$dropout" == "$DROPOUT" ]] || group=control-d$dropout
    train_control "$RUNS/$group/seed$seed" "$seed" "$dropout"
    describe "$RUNS/$group/seed$seed" "$group" control "$seed" dropout "$dropout"
}

run_pair() {
    local seed=$1 name=$2 alpha=$3 gamma=$4 interval=$5 burn_in=$6 loss=$7 snapshot=${8:-fp16}
    local dir=$RUNS/codistill-$name/seed$seed regime=false
    [[ "$name" == "$REGIME" ]] && regime=true
    train_pair "$dir" "$seed" "$alpha" "$gamma" "$interval" "$burn_in" "$loss" "$snapshot"
    describe "$dir" "codistill-$name" codistill "$seed" regime "$regime" dropout "$DROPOUT" \
        alpha "$alpha" gamma "$gamma" interval "$interval" burn_in "$burn_in" loss "$loss" \
        snapshot "$snapshot"
}

main() {
    command -v "$FAIRSEQ_TRAIN" > /dev/null || {
        echo "study: $FAIRSEQ_TRAIN not found on PATH: run 'make install' and put .venv/bin on PATH" >&2
        exit 1
    }
    grep -q "^$REGIME " <<< "$GRID" || { echo "study: REGIME=$REGIME is not a line of GRID" >&2; exit 1; }
    say "data: $LANG_PAIR, a $TRAIN_FRACTION fraction of the training pairs -> $DATA"
    prepare_data
    say "runs: $UPDATES updates of $TOKENS tokens, seeds $SEEDS, $PRECISION on $DEVICE, $SLOTS at once"
    local seed name alpha gamma interval burn_in loss snapshot dropout
    # What every claim needs first (the control and the baseline), then the grid line by
    # line, all seeds of a line together: a study stopped early has whole configurations.
    for seed in $SEEDS; do
        for dropout in $CONTROL_DROPOUTS; do
            schedule 1 "control dropout $dropout seed $seed" run_control "$seed" "$dropout"
        done
        if [[ "$BASELINE" == 1 ]]; then schedule 1 "baseline seed $seed" run_baseline "$seed"; fi
    done
    while read -r name alpha gamma interval burn_in loss snapshot; do
        [[ -n "$name" ]] || continue
        for seed in $SEEDS; do
            schedule 2 "codistill-$name seed $seed" run_pair "$seed" "$name" "$alpha" "$gamma" \
                "$interval" "$burn_in" "$loss" "${snapshot:-fp16}"
        done
    done <<< "$GRID"
    while (( USED > 0 )); do reap_one; done
    say "all runs finished ($FAILED failed); the report:"
    fairseq-codistill-report --study "$RUNS" --out "$STUDY_DIR/report"
    say "done in $(( (SECONDS - START) / 60 )) min: $STUDY_DIR/report/study.md"
    (( FAILED == 0 ))
}

main
