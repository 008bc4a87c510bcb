# shellcheck shell=bash
# The runs of the demo and the study on the local gettext corpus; sourced by recipes/demo.sh
# and recipes/study.sh, not run by itself. Three kinds of run, all with the same model,
# optimiser, schedule, number of updates and per-worker batch of TOKENS tokens:
#
#   train_baseline DIR SEED: synchronous all-reduce of 2 workers with label smoothing 0.1,
#       as its exact single-process equivalent (--update-freq 2: each update sums the
#       gradients of 2 batches of TOKENS, as 2 all-reducing workers would);
#   train_pair DIR SEED ALPHA GAMMA INTERVAL BURN_IN [LOSS]: 2 codistilled models under
#       fairseq-codistill-launch, each with one worker's batch, no label smoothing;
#   train_control DIR SEED [DROPOUT]: the codistilled model with its peer removed (same
#       architecture, dropout, batch, seed and updates), plain cross-entropy.
#
# Every run uses --task codistill_translation (alone: --codistill-num-models 1), so every
# run logs param_dist. A run is skipped when DIR/done holds the same settings.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLUGIN=$REPO/fairseq_codistill
PYTHON=${PYTHON:-python}

LANG_PAIR=${LANG_PAIR:-de-en}            # SRC-TGT, one side en (see data-prep/prepare-gettext.sh)
# 1/16 of the 38K training pairs (2.4K, ~40 updates an epoch): a lone model starts to overfit
# within the run, the paper's less-data regime (Section 4) where codistillation regularises.
TRAIN_FRACTION=${TRAIN_FRACTION:-0.0625}
VOCAB_SIZE=${VOCAB_SIZE:-2000}           # joint sentencepiece BPE, sized for the small corpus
DATA=${DATA:-data-bin/gettext.$LANG_PAIR.frac$TRAIN_FRACTION.v$VOCAB_SIZE}
UPDATES=${UPDATES:-480}                  # of every model
TOKENS=${TOKENS:-1024}                   # per batch of one all-reduce worker = one codistilled model
VALIDATE=${VALIDATE:-$(( UPDATES / 12 > 1 ? UPDATES / 12 : 1 ))}  # updates between validations
DROPOUT=${DROPOUT:-0.1}
LR=${LR:-2e-3}
# Codistillation: alpha0 x GAMMA per epoch, snapshots every INTERVAL updates, alpha 0 for
# the first BURN_IN updates (recipes/study.sh measured these; see the README's study).
ALPHA=${ALPHA:-0.1}
GAMMA=${GAMMA:-1.1}
INTERVAL=${INTERVAL:-40}
BURN_IN=${BURN_IN:-0}
DEVICE=${DEVICE:-cpu}                    # cpu, or cuda: every run on the visible GPU
# auto: bf16 where the device is fast at it (a CPU with AMX-BF16 or AVX512-BF16, a GPU with
# bf16), fp16 on a GPU without bf16, fp32 elsewhere; or set it.
PRECISION=${PRECISION:-auto}
if [[ "$PRECISION" == auto ]]; then
    PRECISION=$("$PYTHON" -m fairseq_codistill.precision --device "$DEVICE")
fi
THREADS=${THREADS:-$(nproc)}             # CPU cores in all
# Models of a pair meet at each exchange (wait until the peer has published the same
# update): which peer version a model reads no longer depends on the scheduler.
MAX_LEAD=${MAX_LEAD:-1}
WAIT_FOR_PEERS=${WAIT_FOR_PEERS:-600}
SAVE=${SAVE:-1}                          # 0: no checkpoints (a study reads only the logs)
FAIRSEQ_TRAIN=${FAIRSEQ_TRAIN:-fairseq-train}

SRC=${LANG_PAIR%-*}
TGT=${LANG_PAIR#*-}
BIN=$DATA/bin

# A transformer small enough for a CPU: LAYERS+LAYERS layers of width DIM, pre-norm so that a
# short warm-up at a high learning rate stays stable, embeddings shared (a joint vocabulary).
LAYERS=${LAYERS:-3}
DIM=${DIM:-256}
model_args() {
    local dropout=$1
    MODEL_ARGS=(
        --arch transformer
        --encoder-layers "$LAYERS" --decoder-layers "$LAYERS"
        --encoder-embed-dim "$DIM" --decoder-embed-dim "$DIM"
        --encoder-ffn-embed-dim "$(( 2 * DIM ))" --decoder-ffn-embed-dim "$(( 2 * DIM ))"
        --encoder-attention-heads 4 --decoder-attention-heads 4
        --encoder-normalize-before --decoder-normalize-before
        --share-all-embeddings
        --dropout "$dropout"
    )
}

# TRAIN_ARGS for SEED and DROPOUT. --required-batch-size-multiple 1: with fairseq's default
# of 8 the last batch of a split is dropped when it is not full, so some valid sentences
# would never be scored.
train_args() {
    local seed=$1 dropout=$2
    model_args "$dropout"
    TRAIN_ARGS=(
        "$BIN" --source-lang "$SRC" --target-lang "$TGT"
        "${MODEL_ARGS[@]}"
        --optimizer adam --adam-betas "(0.9, 0.98)"
        --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$(( UPDATES / 8 > 1 ? UPDATES / 8 : 1 ))"
        --max-update "$UPDATES" --max-tokens "$TOKENS"
        --validate-interval-updates "$VALIDATE" --validate-interval 1000000
        --log-format json --log-interval "$(( VALIDATE / 2 > 1 ? VALIDATE / 2 : 1 ))" --no-progress-bar
        --num-workers 0 --seed "$seed"
        --required-batch-size-multiple 1
        --task codistill_translation
        --user-dir "$PLUGIN"
    )
    if [[ "$SAVE" == 1 ]]; then TRAIN_ARGS+=(--no-epoch-checkpoints); else TRAIN_ARGS+=(--no-save); fi
    if [[ "$DEVICE" == cpu ]]; then TRAIN_ARGS+=(--cpu); fi
    case "$PRECISION" in
        bf16 | fp16) TRAIN_ARGS+=("--$PRECISION") ;;
        fp32) ;;
        *) echo "PRECISION=$PRECISION: use auto, fp32, bf16 or fp16" >&2; return 1 ;;
    esac
}

# A run is done when DIR/done records the same settings; otherwise it starts afresh.
settings() { printf '%s ' "$@" "$UPDATES" "$TOKENS" "$LR" "$DATA" "$PRECISION" "$DEVICE" "$LAYERS" "$DIM"; }
is_done() { [[ -f "$1/done" && "$(cat "$1/done")" == "$2" ]]; }

# fresh DIR STAMP: 0 (and an empty DIR) when the run must be trained, 1 when it is done.
fresh() {
    if is_done "$1" "$2"; then return 1; fi
    rm -rf "$1"
    mkdir -p "$1"
}

train_baseline() {
    local dir=$1 seed=$2 stamp
    stamp=$(settings baseline "$seed" "$DROPOUT")
    fresh "$dir" "$stamp" || return 0
    train_args "$seed" "$DROPOUT"
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$FAIRSEQ_TRAIN" "${TRAIN_ARGS[@]}" \
        --codistill-num-models 1 --update-freq 2 \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --save-dir "$dir" > "$dir/train.log" 2>&1
    echo "$stamp" > "$dir/done"
}

train_control() {
    local dir=$1 seed=$2 dropout=${3:-$DROPOUT} stamp
    stamp=$(settings control "$seed" "$dropout")
    fresh "$dir" "$stamp" || return 0
    train_args "$seed" "$dropout"
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$FAIRSEQ_TRAIN" "${TRAIN_ARGS[@]}" \
        --codistill-num-models 1 --criterion cross_entropy \
        --save-dir "$dir" > "$dir/train.log" 2>&1
    echo "$stamp" > "$dir/done"
}

# The pair's threads: THREADS shared by its 2 models.
train_pair() {
    local dir=$1 seed=$2 alpha=$3 gamma=$4 interval=$5 burn_in=$6 loss=${7:-mse} snapshot=${8:-fp16}
    local schedule=exponential stamp extra=()
    # the default snapshot dtype is left out of the stamp: runs made before it was a knob stay done
    if [[ "$snapshot" != fp16 ]]; then extra=("snapshot=$snapshot"); fi
    stamp=$(settings pair "$seed" "$DROPOUT" "$alpha" "$gamma" "$interval" "$burn_in" "$loss" "${extra[@]}")
    fresh "$dir" "$stamp" || return 0
    if [[ "$gamma" == 1 ]]; then schedule=constant; fi
    train_args "$seed" "$DROPOUT"
    local devices=(--threads-per-model "$(( THREADS / 2 > 1 ? THREADS / 2 : 1 ))")
    if [[ "$DEVICE" == cuda ]]; then devices=(--share-gpus); fi
    fairseq-codistill-launch \
        --num-models 2 "${devices[@]}" \
        --codistill-dir "$dir/exchange" --save-dir "$dir" \
        --fairseq-train "$(command -v "$FAIRSEQ_TRAIN")" \
        --progress-interval "${PROGRESS_INTERVAL:-600}" \
        -- "${TRAIN_ARGS[@]}" \
        --criterion codistill_ce \
        --codistill-alpha "$alpha" --codistill-alpha-schedule "$schedule" --codistill-gamma "$gamma" \
        --codistill-interval "$interval" --codistill-burn-in-updates "$burn_in" \
        --codistill-loss "$loss" --codistill-snapshot-dtype "$snapshot" \
        --codistill-max-lead "$MAX_LEAD" --codistill-wait-for-peers "$WAIT_FOR_PEERS" \
        > "$dir/launch.log" 2>&1
    rm -rf "$dir/exchange"
    echo "$stamp" > "$dir/done"
}

# prepare_data: the corpus, sentencepiece model and data-bin of DATA (skipped when there).
prepare_data() {
    OUT=$DATA LANG_PAIR=$LANG_PAIR TRAIN_FRACTION=$TRAIN_FRACTION VOCAB_SIZE=$VOCAB_SIZE \
        PYTHON=$PYTHON WORKERS=${THREADS:-2} bash "$REPO/data-prep/prepare-gettext.sh" | grep -v '^skip:'
}
