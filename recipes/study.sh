#!/usr/bin/env bash
# The study at CPU scale: where does codistillation reach all-reduce, and does it beat the
# methods that send the same bytes (LocalSGD, DiLoCo)? On the local gettext corpus (a
# fraction of it, where models overfit), every run trains the same model for the same
# number of updates, over SEEDS; every pair exchanges one model per INTERVAL updates.
# Each line of GRID is one configuration: a name, a kind, and the settings where it
# differs from the regime (recipes/gettext_common.sh's knobs):
#
#   baseline   all-reduce of 2 workers (batch 2B, label smoothing 0.1), as its exact
#              single-process equivalent (--update-freq 2);
#   control    the codistilled model with its peer removed: one model, batch B, plain
#              cross-entropy (the claims use the best dropout of the controls of a setting,
#              so no gain comes from a weakened control);
#   codistill  a codistilled pair (batch B each, no label smoothing);
#   localsgd   a pair averaging its weights every interval (label smoothing 0.1);
#   diloco     a pair taking DiLoCo's outer Nesterov step every interval (label smoothing 0.1);
#   kd         two phases on the same cores: a teacher of peer_layers layers alone, then the
#              model distilling from it (word-level KD: gettext_common.sh's train_kd).
#
# Settings: alpha gamma interval burn_in loss snapshot (codistill), snapshot (localsgd,
# diloco), outer_lr outer_momentum (diloco), dropout updates tokens fraction layers dim
# peer_layers peer_dim (model 1's, a heterogeneous pair; kd: the teacher's), teacher_share
# kd_loss kd_alpha (kd), max_updates (a budget's guard on updates). Longer runs (updates)
# stretch the schedule with them: warm-up and validation follow UPDATES, and gamma is taken
# to the power 480/updates, so alpha ends where the regime's does. Every model is evaluated
# at its best checkpoint by validation NLL and its last (BLEU and chrF, sacrebleu, beam 4,
# test split); then fairseq-codistill-report --study writes STUDY_DIR/report/study.md: mean
# and spread over seeds, the claims in NLL and in BLEU, and the methods side by side.
#
#   bash recipes/study.sh                        # the whole map, in GRID's order
#   GRID_LINES="baseline control diloco-k40-m0.9" bash recipes/study.sh   # some lines only
#   SEEDS="1 2" bash recipes/study.sh            # fewer seeds
#   DEVICE=cuda bash recipes/study.sh            # the same study on a GPU
#   SCENARIOS=1 bash recipes/study.sh            # equal wall time: a straggler, a preemption
#   SCENARIOS=straggler bash recipes/study.sh    # only the 2x straggler's lines (preemption: the other's)
#   SCENARIOS=sizes bash recipes/study.sh        # equal wall time: a small model beside a big one
#   SCENARIOS=sizes-search bash recipes/study.sh # lone models of three sizes: where a big one wins
#
# The scenarios (GRID_SCENARIOS below) train every method for the same wall-clock budget
# (budget=W: the regime's pair's wall time on the same seed, run first; fairseq's
# --stop-time-hours) with model 1 slowed (slowdown=F) or preempted (preempt=AT:FOR, in
# seconds or multiples of W), each line alone on the machine, seed by seed. More settings:
# async=1 (LocalSGD, DiLoCo: --codistill-async), max_lead=0 (codistillation never waits),
# ranks=2 (all-reduce as a real 2-rank job under fairseq-codistill-launch).
#
# Finished runs are skipped when the script runs again with the same settings. Every knob of
# recipes/gettext_common.sh (LANG_PAIR, LR, PRECISION ...) applies; fairseq's logs are
# STUDY_DIR/runs/NAME/seed*/{train.log,model*/train.log}.
set -euo pipefail

SEEDS=${SEEDS:-1 2 3}
# Processes at once: one single-threaded process per core on a CPU (a pair takes two).
if [[ "${DEVICE:-cpu}" == cuda ]]; then SLOTS=${SLOTS:-4}; else SLOTS=${SLOTS:-$(nproc)}; fi
# In this order, all seeds of a line together: a study stopped early has whole lines, and
# what decides the method comes first.
# name                      kind       settings (the regime's for the rest)
GRID_DEFAULT="
baseline                    baseline
control                     control
codistill-a0.1-k40          codistill
localsgd-k40                localsgd
diloco-k40-m0.9             diloco     outer_momentum=0.9
diloco-k40-m0.5             diloco     outer_momentum=0.5
codistill-a0.1-k40-d0       codistill  dropout=0
codistill-a0.1-k40-d0.05    codistill  dropout=0.05
control-d0.05               control    dropout=0.05
control-d0.3                control    dropout=0.3
codistill-a0.1-k40-deep6    codistill  peer_layers=6
control-l6                  control    layers=6
baseline-u960               baseline   updates=960
control-u960                control    updates=960
codistill-a0.1-k40-u960     codistill  updates=960
diloco-k40-m0.5-u960        diloco     outer_momentum=0.5 updates=960
baseline-t4096              baseline   tokens=4096 fraction=0.25
control-t4096               control    tokens=4096 fraction=0.25
codistill-a0.1-k40-t4096    codistill  tokens=4096 fraction=0.25
diloco-k40-m0.5-t4096       diloco     outer_momentum=0.5 tokens=4096 fraction=0.25
localsgd-k40-t4096          localsgd   tokens=4096 fraction=0.25
codistill-a0.1-k20          codistill  interval=20
codistill-a0.1-k160         codistill  interval=160
codistill-a0.1-k40-const    codistill  gamma=1
baseline-u1920              baseline   updates=1920
control-u1920               control    updates=1920
codistill-a0.1-k40-u1920    codistill  updates=1920
localsgd-k40-u1920          localsgd   updates=1920
diloco-k40-m0.5-u1920       diloco     outer_momentum=0.5 updates=1920
localsgd-k40-fp32           localsgd   snapshot=fp32
localsgd-k40-int8           localsgd   snapshot=int8
diloco-k40-m0.5-int8        diloco     outer_momentum=0.5 snapshot=int8
localsgd-k40-u960           localsgd   updates=960
codistill-a0.1-k40-int8     codistill  snapshot=int8
codistill-a0.3-k40          codistill  alpha=0.3
codistill-a0.1-k40-burn120  codistill  burn_in=120
codistill-a0.1-k40-kl       codistill  loss=kl
codistill-a0.01-k40-kl      codistill  loss=kl alpha=0.01
"
# The scenarios (SCENARIOS=1): where codistillation should pay, at equal wall time. The
# regime's pair first: its wall time for UPDATES updates, on each seed, is the budget W of
# every other line of that seed. Each method then trains for W at equal speed, with model 1
# (all-reduce: rank 1 of its 2-rank job) at half speed throughout, and with model 1 (all-reduce:
# the whole job) killed at 0.375 W and back from its checkpoint a quarter of W later.
# Codistillation never waits there (max_lead=0); LocalSGD and DiLoCo run synchronous and
# asynchronous; the fast model alone is the control. Every line has the machine to itself.
GRID_SCENARIOS="
codistill-a0.1-k40                codistill
baseline-r2-W                     baseline   ranks=2 budget=W
localsgd-k40-W                    localsgd   budget=W
localsgd-k40-async-W              localsgd   async=1 budget=W
diloco-k40-m0.5-W                 diloco     budget=W
diloco-k40-m0.5-async-W           diloco     async=1 budget=W
codistill-a0.1-k40-lead0-W        codistill  max_lead=0 budget=W
control-W                         control    budget=W
baseline-r2-W-slow2               baseline   ranks=2 budget=W slowdown=2
localsgd-k40-W-slow2              localsgd   budget=W slowdown=2
localsgd-k40-async-W-slow2        localsgd   async=1 budget=W slowdown=2
diloco-k40-m0.5-W-slow2           diloco     budget=W slowdown=2
diloco-k40-m0.5-async-W-slow2     diloco     async=1 budget=W slowdown=2
codistill-a0.1-k40-lead0-W-slow2  codistill  max_lead=0 budget=W slowdown=2
baseline-r2-W-pre                 baseline   ranks=2 budget=W preempt=0.375W:0.25W
localsgd-k40-W-pre                localsgd   budget=W preempt=0.375W:0.25W
localsgd-k40-async-W-pre          localsgd   async=1 budget=W preempt=0.375W:0.25W
diloco-k40-m0.5-W-pre             diloco     budget=W preempt=0.375W:0.25W
diloco-k40-m0.5-async-W-pre       diloco     async=1 budget=W preempt=0.375W:0.25W
codistill-a0.1-k40-lead0-W-pre    codistill  max_lead=0 budget=W preempt=0.375W:0.25W
"
# Two model sizes (SCENARIOS=sizes): a small model (layers=1 dim=64: 1+1 layers of width 64)
# codistilled beside a big one (peer_layers=3 peer_dim=256: the regime's 3+3 of width 256) that
# never waits for it, against the small model alone and the two-phase alternative (kd: the big
# model for half of the budget, then the small one distilled from it), all for 3W on a quarter
# of the data. It asks for a regime where the big model alone translates better than the small
# one beyond the spread: the two lone models are its check (docs/study-method.md says how the
# search below found it). Alpha grows per epoch, and 3W takes the small model through about
# three times the regime's epochs: with the regime's gamma (1.1, the last line, seed 1) its alpha
# ended about twelve times the regime's; the pair's gamma=1.03 ends it near the regime's.
GRID_SIZES="
codistill-a0.1-k40                                   codistill
control-l1-d64-f0.25-3W                              control    layers=1 dim=64 fraction=0.25 budget=3W max_updates=20000
control-f0.25-3W                                     control    fraction=0.25 budget=3W
codistill-a0.1-g1.03-k40-l1-d64-deep3-lead0-f0.25-3W codistill gamma=1.03 layers=1 dim=64 peer_layers=3 peer_dim=256 max_lead=0 fraction=0.25 budget=3W max_updates=20000
kd-l1-d64-deep3-f0.25-3W                             kd         layers=1 dim=64 peer_layers=3 peer_dim=256 fraction=0.25 budget=3W max_updates=20000
codistill-a0.1-k40-l1-d64-deep3-lead0-f0.25-3W       codistill  layers=1 dim=64 peer_layers=3 peer_dim=256 max_lead=0 fraction=0.25 budget=3W max_updates=20000
"
# The search (SCENARIOS=sizes-search): lone models of 1+1, 3+3 and 6+6 layers on a quarter of
# the data for W, where the smaller model alone was the better at every size; the scenario's
# lines with a small model of the regime's width (1+1 layers of 256) for W and 3W, where the big
# model alone was better in validation NLL only (at 3W; in BLEU the two were level); a small
# model of width 128 alone for 3W, still too close to the big one in BLEU (seed 1).
GRID_SIZES_SEARCH="
codistill-a0.1-k40                                   codistill
control-l6-f0.25-W                                   control    layers=6 fraction=0.25 budget=W
control-f0.25-W                                      control    fraction=0.25 budget=W
control-l1-f0.25-W                                   control    layers=1 fraction=0.25 budget=W
codistill-a0.1-k40-l1-deep3-lead0-f0.25-W            codistill  layers=1 peer_layers=3 max_lead=0 fraction=0.25 budget=W
kd-l1-deep3-f0.25-W                                  kd         layers=1 peer_layers=3 fraction=0.25 budget=W
control-f0.25-3W                                     control    fraction=0.25 budget=3W
control-l1-f0.25-3W                                  control    layers=1 fraction=0.25 budget=3W
codistill-a0.1-k40-l1-deep3-lead0-f0.25-3W           codistill  layers=1 peer_layers=3 max_lead=0 fraction=0.25 budget=3W
kd-l1-deep3-f0.25-3W                                 kd         layers=1 peer_layers=3 fraction=0.25 budget=3W
control-l1-d128-f0.25-3W                             control    layers=1 dim=128 fraction=0.25 budget=3W max_updates=20000
"
REGIME=${REGIME:-codistill-a0.1-k40} # the line whose settings are the defaults
SCENARIOS=${SCENARIOS:-0}
GRID_OF="SCENARIOS=$SCENARIOS"       # which grid, for messages
case "$SCENARIOS" in
    0 | 1 | sizes | sizes-search) ;;
    # One scenario: the regime's pair (it measures W), the fast model alone and the lines
    # whose names end in the scenario's suffix.
    straggler | preemption)
        suffix=-slow2
        if [[ "$SCENARIOS" == preemption ]]; then suffix=-pre; fi
        GRID=${GRID:-$(awk -v suffix="$suffix" -v regime="$REGIME" \
            '$1 == regime || $1 == "control-W" || substr($1, length($1) - length(suffix) + 1) == suffix' \
            <<< "$GRID_SCENARIOS")}
        STUDY_DIR=${STUDY_DIR:-study-$SCENARIOS}
        SCENARIOS=1 ;;
    *) echo "study: SCENARIOS=$SCENARIOS: use 0 (the map), 1 (stragglers, preemption), straggler, preemption, sizes or sizes-search" >&2; exit 1 ;;
esac
if [[ "$SCENARIOS" == sizes* ]]; then
    if [[ "$SCENARIOS" == sizes-search ]]; then GRID=${GRID:-$GRID_SIZES_SEARCH}; fi
    GRID=${GRID:-$GRID_SIZES}
    ORDER=${ORDER:-seeds}
    STUDY_DIR=${STUDY_DIR:-study-sizes}
elif [[ "$SCENARIOS" == 1 ]]; then
    GRID=${GRID:-$GRID_SCENARIOS}
    ORDER=${ORDER:-seeds}
    STUDY_DIR=${STUDY_DIR:-study-scenarios}
fi
GRID=${GRID:-$GRID_DEFAULT}
STUDY_DIR=${STUDY_DIR:-study}
# lines: all seeds of a line together (a study stopped early has whole lines); seeds: every
# line of one seed, then the next (whole seeds: the scenarios compare lines of one seed's W).
ORDER=${ORDER:-lines}
GRID_LINES=${GRID_LINES:-}           # names of the lines to run (default: all)

SAVE_BEST=1                          # checkpoint_best.pt by validation NLL, for BLEU
# shellcheck source=recipes/gettext_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gettext_common.sh"
RUNS=$STUDY_DIR/runs
START=$SECONDS
REGIME_UPDATES=$UPDATES REGIME_GAMMA=$GAMMA REGIME_DIM=$DIM

say() { printf '[study %dm%02ds] %s\n' $(( (SECONDS - START) / 60 )) $(( (SECONDS - START) % 60 )) "$*"; }

# A small scheduler: schedule SLOTS_NEEDED THREADS LABEL CMD... starts CMD (with THREADS
# cores) in the background once that many slots are free. Failures are counted, not fatal: the other runs go on.
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
    local need=$1 threads=$2 label=$3
    shift 3
    while (( USED > 0 && USED + need > SLOTS )); do reap_one; done
    THREADS=$threads "$@" &
    SLOTS_OF[$!]=$need
    LABEL_OF[$!]=$label
    USED=$(( USED + need ))
}

# in_seconds VALUE: seconds, from a number of seconds or a multiple of the scenario's
# budget W ("W", "0.25W"): the wall time the regime's pair took for its UPDATES updates in
# this study, on the same seed (its line must come first).
in_seconds() {
    local value=$1
    if [[ "$value" != *W ]]; then echo "$value"; return; fi
    local factor=${value%W} wall
    wall=$("$PYTHON" -m fairseq_codistill.tools.study --wall "$RUNS/$REGIME/seed$SEED") || {
        echo "study: $value: the regime's line ($REGIME) has not run for seed $SEED, so W is unknown" >&2
        return 1
    }
    "$PYTHON" -c "print(round(${factor:-1} * $wall, 1))"
}

# apply SETTING...: a line's key=value settings as the knobs of gettext_common.sh.
apply() {
    local setting key value
    for setting in "$@"; do
        key=${setting%%=*} value=${setting#*=}
        case "$key" in
            alpha) ALPHA=$value ;; gamma) GAMMA=$value ;; interval) INTERVAL=$value ;;
            burn_in) BURN_IN=$value ;; loss) LOSS=$value ;; snapshot) SNAPSHOT=$value ;;
            dropout) DROPOUT=$value ;; updates) UPDATES=$value ;; tokens) TOKENS=$value ;;
            fraction) TRAIN_FRACTION=$value ;; layers) LAYERS=$value ;; peer_layers) PEER_LAYERS=$value ;;
            dim) DIM=$value ;; peer_dim) PEER_DIM=$value ;; max_updates) MAX_UPDATES=$value ;;
            outer_lr) OUTER_LR=$value ;; outer_momentum) OUTER_MOMENTUM=$value ;;
            async) ASYNC=$value ;; max_lead) MAX_LEAD=$value ;; ranks) RANKS=$value ;;
            teacher_share) TEACHER_SHARE=$value ;; kd_loss) KD_LOSS=$value ;; kd_alpha) KD_ALPHA=$value ;;
            budget) BUDGET=$(in_seconds "$value") ;; slowdown) SLOWDOWN=$value ;;
            preempt) PREEMPT="$(in_seconds "${value%%:*}"):$(in_seconds "${value#*:}")" ;;
            *) echo "study: unknown setting '$setting' in GRID" >&2; return 1 ;;
        esac
    done
    # a longer run grows alpha more slowly, so that it ends where the regime's does
    if [[ " $* " != *" gamma="* && "$UPDATES" != "$REGIME_UPDATES" ]]; then
        GAMMA=$("$PYTHON" -c "print(round($REGIME_GAMMA ** ($REGIME_UPDATES / $UPDATES), 4))")
    fi
    derive
}

# describe DIR NAME KIND SEED: DIR/study.json, what the report groups and compares runs by,
# and where it ran (CPU, precision, versions, commit, date: fairseq_codistill.tools.study).
describe() {
    local dir=$1 name=$2 kind=$3 seed=$4 regime=false
    [[ "$name" == "$REGIME" ]] && regime=true
    "$PYTHON" - "$dir/study.json" <<EOF
import json, os, sys
meta = {"group": "$name", "kind": "$kind", "seed": $seed, "regime": $( [[ $regime == true ]] && echo True || echo False ),
        "lang_pair": "$LANG_PAIR", "updates": $UPDATES, "tokens": $TOKENS, "fraction": $TRAIN_FRACTION,
        "layers": $LAYERS, "dropout": $DROPOUT}
# a width other than the regime's (DIM) is written; none means the regime's
if $DIM != $REGIME_DIM:
    meta.update(dim=$DIM)
if "$kind" in ("codistill", "kd") and ${PEER_DIM:-$DIM} != $REGIME_DIM:
    meta.update(peer_dim=${PEER_DIM:-$DIM})
if "$kind" == "codistill":
    meta.update(alpha=$ALPHA, gamma=$GAMMA, interval=$INTERVAL, burn_in=$BURN_IN, loss="$LOSS",
                snapshot="$SNAPSHOT", peer_layers=${PEER_LAYERS:-$LAYERS})
elif "$kind" in ("localsgd", "diloco"):
    meta.update(interval=$INTERVAL, snapshot="$SNAPSHOT")
if "$kind" == "diloco":
    meta.update(outer_lr=$OUTER_LR, outer_momentum=$OUTER_MOMENTUM)
if "$kind" == "kd":
    meta.update(peer_layers=${PEER_LAYERS:-$LAYERS}, teacher_share=$TEACHER_SHARE, kd_loss="$KD_LOSS",
                kd_alpha=$KD_ALPHA, interval=$INTERVAL, snapshot="$SNAPSHOT")
if "$kind" in ("localsgd", "diloco") and "$ASYNC" == "1":
    meta.update(asynchronous=True)
if "$kind" == "codistill" and "$MAX_LEAD" != "1":
    meta.update(max_lead=$MAX_LEAD)
if "$kind" == "baseline" and "$RANKS" != "1":
    meta.update(ranks=$RANKS)
for key, value in (("budget", "$BUDGET"), ("slowdown", "$SLOWDOWN"), ("preempt", "$PREEMPT"),
                   ("max_updates", "$MAX_UPDATES")):
    if value:
        meta[key] = [float(v) for v in value.split(":")] if key == "preempt" else \
            int(value) if key == "max_updates" else float(value)
from fairseq_codistill.tools.results import environment
meta["env"] = environment(precision="$PRECISION", device="$DEVICE", threads=$THREADS)
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(meta, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
EOF
}

# run_line NAME KIND SEED SETTING...: train one seed of one line, evaluate it, describe it.
run_line() {
    local name=$1 kind=$2 seed=$3 dir=$RUNS/$1/seed$3
    shift 3
    SEED=$seed
    apply "$@"
    case "$kind" in
        baseline) train_baseline "$dir" "$seed" ;;
        control) train_control "$dir" "$seed" "$DROPOUT" ;;
        codistill) METHOD=distill train_pair "$dir" "$seed" ;;
        localsgd | diloco) METHOD=$kind train_pair "$dir" "$seed" ;;
        kd) train_kd "$dir" "$seed" ;;
    esac
    evaluate_run "$dir"
    # a finished run skipped above keeps the description of the machine and commit it ran on
    if [[ ! -f "$dir/study.json" || "$dir/done" -nt "$dir/study.json" ]]; then
        describe "$dir" "$name" "$kind" "$seed"
    fi
}

# schedule_lines SEEDS: every line of GRID, each with all of SEEDS. A line with a budget
# (wall-clock time) has the whole machine: its pace is what it measures.
schedule_lines() {
    local name kind settings seed need threads
    while read -r name kind settings; do
        [[ -n "$name" && "$name" != \#* ]] || continue
        if [[ -n "$GRID_LINES" && " $GRID_LINES " != *" $name "* ]]; then continue; fi
        threads=1
        case "$kind" in codistill | localsgd | diloco | kd) threads=2 ;; esac
        if [[ " $settings " == *" ranks="* ]]; then threads=2; fi
        need=$threads
        if [[ "$SCENARIOS" != 0 ]]; then need=$SLOTS; fi
        for seed in $1; do
            # shellcheck disable=SC2086  # the settings are words
            schedule "$need" "$threads" "$name seed $seed" run_line "$name" "$kind" "$seed" $settings
        done
    done <<< "$GRID"
}

main() {
    command -v "$FAIRSEQ_TRAIN" > /dev/null || {
        echo "study: $FAIRSEQ_TRAIN not found on PATH: run 'make install' and put .venv/bin on PATH" >&2
        exit 1
    }
    local name kind settings fractions=() names=" "
    while read -r name kind settings; do
        [[ -n "$name" && "$name" != \#* ]] || continue
        names+="$name "
        case "$kind" in
            baseline | control | codistill | localsgd | diloco) ;;
            kd) [[ " $settings " == *" peer_layers="* ]] || {
                    echo "study: line $name: kind kd needs peer_layers=N (the teacher's layers)" >&2; exit 1; } ;;
            *) echo "study: line $name: unknown kind '$kind'" >&2; exit 1 ;;
        esac
        if [[ "$settings" =~ fraction=([^ ]+) ]]; then fractions+=("${BASH_REMATCH[1]}"); fi
    done <<< "$GRID"
    for name in $GRID_LINES; do
        [[ "$names" == *" $name "* ]] || {
            echo "study: GRID_LINES: no line '$name' in the grid of $GRID_OF; its lines:$names" >&2; exit 1; }
    done
    local fraction
    for fraction in $(printf '%s\n' "$TRAIN_FRACTION" "${fractions[@]}" | sort -u); do
        ( TRAIN_FRACTION=$fraction; derive
          say "data: $LANG_PAIR, a $TRAIN_FRACTION fraction of the training pairs -> $DATA"
          prepare_data )
    done
    say "runs: seeds $SEEDS, $PRECISION on $DEVICE, $SLOTS at once; the regime: $UPDATES updates of $TOKENS tokens"
    if [[ "$ORDER" == seeds ]]; then
        for seed in $SEEDS; do schedule_lines "$seed"; done
    else
        schedule_lines "$SEEDS"
    fi
    while (( USED > 0 )); do reap_one; done
    say "all runs finished ($FAILED failed); the report:"
    fairseq-codistill-report --study "$RUNS" --out "$STUDY_DIR/report"
    say "done in $(( (SECONDS - START) / 60 )) min: $STUDY_DIR/report/study.md"
    (( FAILED == 0 ))
}

main
