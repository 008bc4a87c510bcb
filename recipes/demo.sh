#!/usr/bin/env bash
# make demo: the paper's NMT claim on real text, on a laptop CPU, in about 15 minutes.
#
# Data: German->English gettext messages installed on this machine (no download).
# 1. baseline: synchronous all-reduce of 2 workers with label smoothing 0.1, run as its
#    exact single-process equivalent (see below);
# 2. codistillation: 2 models started by fairseq-codistill-launch, each with one worker's
#    batch and the same number of updates, no label smoothing, alpha growing 1.1x/epoch;
# 3. validation NLL and sacrebleu BLEU on the test split: baseline, each codistilled model
#    and their ensemble; then fairseq-codistill-report writes DEMO_DIR/report/.
# fairseq's own logs go to files under DEMO_DIR; the terminal shows progress and the table.
#
#   bash recipes/demo.sh                       # with the venv's bin on PATH (make demo)
#   DEMO_UPDATES=40 DEMO_DIR=/tmp/d bash recipes/demo.sh   # a smoke run
set -euo pipefail

DEMO_DIR=${DEMO_DIR:-demo}
LANG_PAIR=${LANG_PAIR:-de-en}                # SRC-TGT, one side en (see data-prep/prepare-gettext.sh)
DATA=${DATA:-data-bin/gettext.$LANG_PAIR}
# Updates of every model. 500: ~14 min on 2 idle cores (baseline ~1.5 updates/s, each
# codistilled model ~1.8/s on its core, evaluation ~2.5 min); BLEU is well above 0 by then.
DEMO_UPDATES=${DEMO_UPDATES:-500}
DEMO_THREADS=${DEMO_THREADS:-2}              # cores: the baseline uses all, each codistilled model half
DEMO_TOKENS=${DEMO_TOKENS:-1024}             # tokens per batch of one all-reduce worker = one codistilled model
DEMO_VALIDATE=${DEMO_VALIDATE:-$(( DEMO_UPDATES / 4 > 1 ? DEMO_UPDATES / 4 : 1 ))}  # updates between validations
# Snapshot exchange every K updates: about a dozen exchanges per run (Anil et al.: every
# 50 updates; the paper: every 2500 of a much longer run, robust to 2-4x either way).
DEMO_INTERVAL=${DEMO_INTERVAL:-$(( DEMO_UPDATES / 12 > 5 ? DEMO_UPDATES / 12 : 5 ))}
# Initial alpha, x1.1 every epoch (the paper's NMT schedule; it tuned alpha0, unreported).
# Measured at 500 updates, val NLL of each codistilled model: alpha0 1.0: 5.86, 0.1: 5.25-5.29,
# a model trained alone on the same batches: 5.25. Under Adam even a small penalty gradient
# takes full steps, so a large alpha0 holds both models back early.
DEMO_ALPHA=${DEMO_ALPHA:-0.1}
DEMO_BEAM=${DEMO_BEAM:-4}
DEMO_SEED=${DEMO_SEED:-1}
FAIRSEQ_TRAIN=${FAIRSEQ_TRAIN:-fairseq-train}  # the launcher starts this one for each model
PYTHON=${PYTHON:-python}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLUGIN=$ROOT/fairseq_codistill
SRC=${LANG_PAIR%-*}
TGT=${LANG_PAIR#*-}
BIN=$DATA/bin
CODISTILL_THREADS=$(( DEMO_THREADS / 2 > 1 ? DEMO_THREADS / 2 : 1 ))
START=$SECONDS

# A transformer small enough for a CPU: 3+3 layers of width 256, pre-norm so that a short
# warm-up at a high learning rate stays stable, embeddings shared (a joint vocabulary).
MODEL=(
    --arch transformer
    --encoder-layers 3 --decoder-layers 3
    --encoder-embed-dim 256 --decoder-embed-dim 256
    --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
    --encoder-attention-heads 4 --decoder-attention-heads 4
    --encoder-normalize-before --decoder-normalize-before
    --share-all-embeddings
    --dropout 0.1
)
# --required-batch-size-multiple 1 (also in evaluate below): with fairseq's default of 8, the
# last batch of a split is dropped when it is not full, so some valid and test sentences
# would never be scored.
TRAIN=(
    "$BIN" --source-lang "$SRC" --target-lang "$TGT"
    "${MODEL[@]}"
    --optimizer adam --adam-betas "(0.9, 0.98)"
    --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates "$(( DEMO_UPDATES / 8 > 1 ? DEMO_UPDATES / 8 : 1 ))"
    --max-update "$DEMO_UPDATES"
    --validate-interval-updates "$DEMO_VALIDATE"
    --no-epoch-checkpoints
    --log-format json --log-interval "$(( DEMO_UPDATES / 40 > 1 ? DEMO_UPDATES / 40 : 1 ))" --no-progress-bar
    --cpu --num-workers 0 --seed "$DEMO_SEED"
    --required-batch-size-multiple 1
    --user-dir "$PLUGIN"
)

say() { printf '[demo %s] %s\n' "$(elapsed $(( SECONDS - START )))" "$*"; }
elapsed() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

need() {
    command -v "$1" > /dev/null || {
        echo "demo: $1 not found on PATH: run 'make demo' (it installs into .venv first)" >&2
        exit 1
    }
}

# A stage is skipped when its stamp records the same settings; otherwise it starts afresh.
settings() { printf '%s ' "$@" "$DEMO_UPDATES" "$DEMO_TOKENS" "$DEMO_SEED" "$LANG_PAIR"; }
is_done() { [[ -f "$1/demo.done" && "$(cat "$1/demo.done")" == "$2" ]]; }

# last_value LOG TAG KEY: KEY of the newest "| TAG |" JSON record in LOG (or nothing)
last_value() {
    grep -F "| $2 | " "$1" 2> /dev/null | tail -n 1 | sed -n "s/.*\"$3\": \"\\([^\"]*\\)\".*/\\1/p" || true
}

# progress LABEL LOG PID: one status line while PID runs, rewritten in place on a terminal.
progress() {
    local label=$1 log=$2 pid=$3 line updates loss nll
    while kill -0 "$pid" 2> /dev/null; do
        updates=$(last_value "$log" train_inner num_updates)
        loss=$(last_value "$log" train_inner loss)
        nll=$(last_value "$log" valid valid_nll_loss)
        line="$label | update ${updates:-0}/$DEMO_UPDATES${loss:+ | loss $loss}${nll:+ | valid nll $nll}"
        line+=" | $(elapsed $(( SECONDS - START )))"
        if [[ -t 1 ]]; then printf '\r\033[K%s' "$line"; else printf '%s\n' "$line"; fi
        sleep "$([[ -t 1 ]] && echo 2 || echo 30)"
    done
    [[ -t 1 ]] && printf '\n'
    return 0
}

# run_logged LABEL LOG CMD...: CMD in the background, its output in LOG, a progress line.
run_logged() {
    local label=$1 log=$2 pid
    shift 2
    "$@" > "$log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2> /dev/null' INT TERM
    progress "$label" "$log" "$pid"
    if ! wait "$pid"; then
        echo "demo: $label failed; the end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    trap - INT TERM
}

train_baseline() {
    local dir=$DEMO_DIR/baseline stamp
    stamp=$(settings baseline)
    say "baseline: synchronous all-reduce of 2 workers x $DEMO_TOKENS tokens, label smoothing 0.1."
    say "  Run as its exact single-process equivalent: one job, --update-freq 2, so each update"
    say "  sums the gradients of 2 batches of $DEMO_TOKENS tokens, as 2 workers all-reducing would."
    if is_done "$dir" "$stamp"; then
        say "  done already ($dir); delete it to train again"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    OMP_NUM_THREADS=$DEMO_THREADS MKL_NUM_THREADS=$DEMO_THREADS \
        run_logged baseline "$dir/train.log" \
        fairseq-train "${TRAIN[@]}" \
        --max-tokens "$DEMO_TOKENS" --update-freq 2 \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --save-dir "$dir"
    echo "$stamp" > "$dir/demo.done"
    say "  baseline trained: $dir/train.log"
}

train_codistill() {
    local dir=$DEMO_DIR/codistill stamp
    stamp=$(settings codistill "$DEMO_INTERVAL" "$DEMO_ALPHA")
    say "codistillation: 2 models x $DEMO_TOKENS tokens, $DEMO_UPDATES updates each, no label"
    say "  smoothing, alpha $DEMO_ALPHA x 1.1 per epoch, snapshots exchanged every $DEMO_INTERVAL updates."
    if is_done "$dir" "$stamp"; then
        say "  done already ($dir); delete it to train again"
        return
    fi
    rm -rf "$dir" "$DEMO_DIR/exchange"
    mkdir -p "$dir"
    if ! fairseq-codistill-launch \
        --num-models 2 --threads-per-model "$CODISTILL_THREADS" \
        --codistill-dir "$DEMO_DIR/exchange" --save-dir "$dir" \
        --fairseq-train "$(command -v "$FAIRSEQ_TRAIN")" \
        --progress-interval 30 \
        -- "${TRAIN[@]}" \
        --max-tokens "$DEMO_TOKENS" \
        --task codistill_translation --criterion codistill_ce \
        --codistill-alpha "$DEMO_ALPHA" --codistill-alpha-schedule exponential --codistill-gamma 1.1 \
        --codistill-interval "$DEMO_INTERVAL"; then
        echo "demo: codistillation failed; see $dir/model*/train.log" >&2
        exit 1
    fi
    echo "$stamp" > "$dir/demo.done"
}

# evaluate LABEL DIR CHECKPOINTS: BLEU on test and NLL on valid into DIR/eval.json
evaluate() {
    local label=$1 dir=$2 path=$3 checkpoint fresh=1
    local checkpoints generate
    IFS=: read -r -a checkpoints <<< "$path"
    for checkpoint in "${checkpoints[@]}"; do
        [[ "$dir/eval.json" -nt "$checkpoint" ]] || fresh=0
    done
    if (( fresh )); then
        say "  $label: evaluated already ($dir/eval.json)"
        return
    fi
    generate=(
        fairseq-generate "$BIN" --source-lang "$SRC" --target-lang "$TGT"
        --path "$path" --user-dir "$PLUGIN" --cpu --max-tokens 4096
        --required-batch-size-multiple 1
    )
    mkdir -p "$dir"
    export OMP_NUM_THREADS=$DEMO_THREADS MKL_NUM_THREADS=$DEMO_THREADS
    "${generate[@]}" --gen-subset test --beam "$DEMO_BEAM" --max-len-a 1.2 --max-len-b 10 \
        --post-process sentencepiece > "$dir/generate-test.txt" 2> "$dir/generate-test.log" \
        || { tail -n 20 "$dir/generate-test.log" >&2; exit 1; }
    "${generate[@]}" --gen-subset valid --score-reference \
        > "$dir/score-valid.txt" 2> "$dir/score-valid.log" \
        || { tail -n 20 "$dir/score-valid.log" >&2; exit 1; }
    "$PYTHON" -m fairseq_codistill.evaluate \
        --generate "$dir/generate-test.txt" --reference "$DATA/raw/test.$TGT" \
        --score-reference "$dir/score-valid.txt" --checkpoint "$path" \
        --out "$dir/eval.json" > /dev/null
    say "  $label: $(tr -d '\n' < "$dir/eval.json" | sed 's/, "sacrebleu": "[^"]*"//')"
}

main() {
    need fairseq-train
    need fairseq-codistill-launch
    need fairseq-codistill-report
    mkdir -p "$DEMO_DIR"
    say "data: $LANG_PAIR pairs from the gettext catalogs in /usr/share/locale -> $DATA"
    OUT=$DATA LANG_PAIR=$LANG_PAIR PYTHON=$PYTHON WORKERS=$DEMO_THREADS \
        bash "$ROOT/data-prep/prepare-gettext.sh"
    train_baseline
    train_codistill
    say "evaluation: beam $DEMO_BEAM on the test split (sacrebleu), NLL of the valid split"
    local c=$DEMO_DIR/codistill
    evaluate baseline "$DEMO_DIR/baseline" "$DEMO_DIR/baseline/checkpoint_last.pt"
    evaluate codistill/model0 "$c/model0" "$c/model0/checkpoint_last.pt"
    evaluate codistill/model1 "$c/model1" "$c/model1/checkpoint_last.pt"
    evaluate codistill/ensemble "$c/ensemble" "$c/model0/checkpoint_last.pt:$c/model1/checkpoint_last.pt"
    echo
    fairseq-codistill-report "$DEMO_DIR/baseline" "$c" --out "$DEMO_DIR/report" --allreduce-workers 2
    echo
    say "done in $(elapsed $(( SECONDS - START ))). val NLL is fairseq's, base 2; the baseline's 'bytes received' is what 2 all-reduce"
    say "workers would exchange. Plots and report.md: $DEMO_DIR/report/"
}

main
