#!/usr/bin/env bash
# make demo: what codistillation adds over training alone, and how far it is from all-reduce,
# on real text on a CPU, in about 15 minutes.
#
# Data: German->English gettext messages installed on this machine (no download), 1/16 of
# the training pairs: the regime of recipes/study.sh where codistillation pays (a model
# starts to overfit a small corpus, and each codistilled model learns from its peer, which
# trains on other batches). Three groups of runs, the same model, updates and batch of
# DEMO_TOKENS per worker (recipes/gettext_common.sh), bf16 where the CPU is fast at it:
# 1. baseline: synchronous all-reduce of 2 workers with label smoothing 0.1, run as its
#    exact single-process equivalent;
# 2. control: one model trained alone, plain cross-entropy;
# 3. codistillation: 2 models started by fairseq-codistill-launch, no label smoothing;
# then validation NLL and sacrebleu BLEU on the test split for each, the codistilled pair's
# ensemble included, and fairseq-codistill-report writes DEMO_DIR/report/.
# fairseq's own logs go to files under DEMO_DIR; the terminal shows progress and the table.
#
#   bash recipes/demo.sh                       # with the venv's bin on PATH (make demo)
#   DEMO_UPDATES=40 DEMO_DIR=/tmp/d bash recipes/demo.sh   # a smoke run
set -euo pipefail

DEMO_DIR=${DEMO_DIR:-demo}
UPDATES=${DEMO_UPDATES:-${UPDATES:-480}}      # of every model (the study's regime: docs/study-method.md)
THREADS=${DEMO_THREADS:-${THREADS:-2}}        # cores in all
TOKENS=${DEMO_TOKENS:-${TOKENS:-1024}}        # per batch of one all-reduce worker = one codistilled model
VALIDATE=${DEMO_VALIDATE:-${VALIDATE:-}}
SEED=${DEMO_SEED:-1}
EVAL_BEAM=${DEMO_BEAM:-${EVAL_BEAM:-4}}
# shellcheck source=recipes/gettext_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gettext_common.sh"
ALPHA=${DEMO_ALPHA:-$ALPHA}
INTERVAL=${DEMO_INTERVAL:-$INTERVAL}
START=$SECONDS

say() { printf '[demo %s] %s\n' "$(elapsed $(( SECONDS - START )))" "$*"; }
elapsed() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

need() {
    command -v "$1" > /dev/null || {
        echo "demo: $1 not found on PATH: run 'make demo' (it installs into .venv first)" >&2
        exit 1
    }
}

# progress LABEL LOG [LABEL LOG]... -- PID...: a status line while any PID runs, rewritten in
# place on a terminal; each LOG's newest update, loss and validation NLL.
progress() {
    local -a labels=() logs=() pids
    while [[ "$1" != -- ]]; do labels+=("$1"); logs+=("$2"); shift 2; done
    shift
    pids=("$@")
    local line i running updates nll
    while :; do
        running=0
        for i in "${pids[@]}"; do kill -0 "$i" 2> /dev/null && running=1; done
        (( running )) || break
        line=""
        for i in "${!labels[@]}"; do
            read -r updates nll < <("$PYTHON" -m fairseq_codistill.tools.logs "${logs[$i]}" \
                train_inner num_updates valid nll_loss)
            [[ "$updates" != - ]] || updates=0
            [[ "$nll" != - ]] || nll=""
            line+="${labels[$i]} $updates/$UPDATES${nll:+ (valid nll $nll)} | "
        done
        line+=$(elapsed $(( SECONDS - START )))
        if [[ -t 1 ]]; then printf '\r\033[K%s' "$line"; else printf '%s\n' "$line"; fi
        sleep "$([[ -t 1 ]] && echo 2 || echo 30)"
    done
    [[ -t 1 ]] && printf '\n'
    return 0
}

# start NAME CMD...: CMD in the background, its pid in PIDS[NAME] (a run that is done already
# returns at once: the train_* functions skip it).
declare -A PIDS
start() {
    local name=$1
    shift
    "$@" &
    PIDS[$name]=$!
}

# finish NAME LOG: wait for NAME's run; on failure, the end of LOG and exit.
finish() {
    [[ -n "${PIDS[$1]:-}" ]] || return 0
    if ! wait "${PIDS[$1]}"; then
        echo "demo: $1 failed; the end of $2:" >&2
        tail -n 20 "$2" >&2
        exit 1
    fi
}

# The baseline and the control start side by side, a core each; the codistilled pair takes
# the control's core when it finishes and shares the other with the baseline's second half,
# so no core idles (the baseline's update is 2 batches, the control's 1).
train_all() {
    local b=$DEMO_DIR/baseline c=$DEMO_DIR/control p=$DEMO_DIR/codistill half
    half=$(( THREADS / 2 > 1 ? THREADS / 2 : 1 ))
    say "baseline: synchronous all-reduce of 2 workers x $TOKENS tokens, label smoothing 0.1."
    say "  Run as its exact single-process equivalent: one job, --update-freq 2, so each update"
    say "  sums the gradients of 2 batches of $TOKENS tokens, as 2 workers all-reducing would."
    say "control: the codistilled model trained alone (batch $TOKENS, cross-entropy, the same seed)."
    say "codistillation: 2 models x $TOKENS tokens, $UPDATES updates each, no label smoothing,"
    say "  alpha $ALPHA x $GAMMA per epoch, snapshots exchanged every $INTERVAL updates."
    if is_done "$b" "$(settings baseline "$SEED" "$DROPOUT")" \
        && is_done "$c" "$(settings control "$SEED" "$DROPOUT")"; then
        say "  baseline and control: done already ($b, $c); delete them to train again"
    fi
    if is_done "$p" "$(pair_settings "$SEED")"; then
        say "  codistillation: done already ($p); delete it to train again"
    fi
    trap 'kill "${PIDS[@]}" 2> /dev/null' INT TERM
    THREADS=$half start baseline train_baseline "$b" "$SEED"
    THREADS=$half start control train_control "$c" "$SEED"
    sleep 1
    progress baseline "$b/train.log" control "$c/train.log" -- "${PIDS[control]}"
    finish control "$c/train.log"
    start codistill train_pair "$p" "$SEED"
    sleep 1
    progress baseline "$b/train.log" model0 "$p/model0/train.log" model1 "$p/model1/train.log" \
        -- "${PIDS[baseline]}" "${PIDS[codistill]}"
    finish baseline "$b/train.log"
    finish codistill "$p/launch.log"
    trap - INT TERM
}

# record_machine: each run's env.json (CPU, precision, versions, commit), written once, when
# the run has trained: fairseq-codistill-report --readme names the machine from it.
record_machine() {
    "$PYTHON" - "$DEMO_DIR" <<EOF
import json, sys
from pathlib import Path
from fairseq_codistill.exchange.storage import atomic_write
from fairseq_codistill.tools.results import environment
env = json.dumps(environment(precision="$PRECISION", device="$DEVICE", threads=$THREADS)).encode()
for run in ("baseline", "control", "codistill"):
    path = Path(sys.argv[1], run, "env.json")
    if not path.exists():
        atomic_write(path, lambda f: f.write(env))
EOF
}

# wait_all PID...: exit if any of them failed (its own messages are out already).
wait_all() {
    local pid
    for pid in "$@"; do wait "$pid" || exit 1; done
}

# evaluate_model LABEL DIR CHECKPOINTS: BLEU and chrF on test, NLL on valid into DIR/eval.json
evaluate_model() {
    local label=$1 dir=$2 path=$3 status=0
    SCORE_VALID=1 evaluate "$dir" "$path" eval || status=$?
    case "$status" in
        0) say "  $label: $(tr -d '\n' < "$dir/eval.json" | sed 's/, "sacrebleu[_a-z]*": "[^"]*"//g')" ;;
        1) say "  $label: evaluated already ($dir/eval.json)" ;;
        *) exit 1 ;;
    esac
}

main() {
    need "$FAIRSEQ_TRAIN"
    need fairseq-codistill-launch
    need fairseq-codistill-report
    mkdir -p "$DEMO_DIR"
    say "data: $LANG_PAIR pairs from the gettext catalogs (a $TRAIN_FRACTION fraction of train) -> $DATA"
    prepare_data
    say "training: $UPDATES updates each, $PRECISION on $DEVICE"
    train_all
    record_machine
    say "evaluation: beam $EVAL_BEAM on the test split (sacrebleu BLEU, chrF), NLL of the valid split"
    local c=$DEMO_DIR/codistill
    # Two at a time, a core each: beam search over small batches keeps one core busy, not two.
    local half=$(( THREADS / 2 > 1 ? THREADS / 2 : 1 )) a b
    THREADS=$half evaluate_model baseline "$DEMO_DIR/baseline" "$DEMO_DIR/baseline/checkpoint_last.pt" & a=$!
    THREADS=$half evaluate_model control "$DEMO_DIR/control" "$DEMO_DIR/control/checkpoint_last.pt" & b=$!
    wait_all "$a" "$b"
    THREADS=$half evaluate_model codistill/model0 "$c/model0" "$c/model0/checkpoint_last.pt" & a=$!
    THREADS=$half evaluate_model codistill/model1 "$c/model1" "$c/model1/checkpoint_last.pt" & b=$!
    wait_all "$a" "$b"
    evaluate_model codistill/ensemble "$c/ensemble" "$c/model0/checkpoint_last.pt:$c/model1/checkpoint_last.pt"
    echo
    fairseq-codistill-report "$DEMO_DIR/baseline" "$c" "$DEMO_DIR/control" \
        --out "$DEMO_DIR/report" --allreduce-workers 2
    echo
    say "done in $(elapsed $(( SECONDS - START ))). val NLL is fairseq's, base 2; the baseline's 'bytes received' is what 2 all-reduce"
    say "workers would exchange. Plots and report.md: $DEMO_DIR/report/"
}

main
