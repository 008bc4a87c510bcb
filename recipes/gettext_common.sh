# shellcheck shell=bash
# The runs of the demo and the study on the local gettext corpus; sourced by recipes/demo.sh
# and recipes/study.sh, not run by itself. Four kinds of run, all with the same model,
# optimiser, schedule, number of updates and per-worker batch of TOKENS tokens:
#
#   train_baseline DIR SEED: synchronous all-reduce of 2 workers with label smoothing 0.1,
#       as its exact single-process equivalent (--update-freq 2: each update sums the
#       gradients of 2 batches of TOKENS, as 2 all-reducing workers would);
#   train_pair DIR SEED: 2 models under fairseq-codistill-launch, each with one worker's
#       batch, sharing every INTERVAL updates what METHOD says: distill (codistillation, no
#       label smoothing, alpha ALPHA x GAMMA per epoch), or localsgd / diloco (their weights,
#       with the baseline's label smoothing, as one would use them);
#   train_control DIR SEED [DROPOUT]: the codistilled model with its peer removed (same
#       architecture, dropout, batch, seed and updates), plain cross-entropy;
#   train_kd DIR SEED: the two-phase alternative to a pair of two sizes: a teacher of
#       PEER_LAYERS layers of width PEER_DIM alone, then a student of LAYERS layers of width
#       DIM distilling from its best checkpoint (word-level KD), one phase after the other on
#       the same cores.
#
# Every run uses --task codistill_translation (alone: --codistill-num-models 1), so every
# run logs param_dist. A run is skipped when DIR/done holds the same settings.
# evaluate DIR CHECKPOINT OUT scores a checkpoint (BLEU and chrF on the test split).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLUGIN=$REPO/fairseq_codistill
PYTHON=${PYTHON:-python}

LANG_PAIR=${LANG_PAIR:-de-en}            # SRC-TGT, one side en (see data-prep/prepare-gettext.sh)
# 1/16 of the 38K training pairs (2.4K, ~40 updates an epoch): a lone model starts to overfit
# within the run, the paper's less-data regime (Section 4) where codistillation regularises.
TRAIN_FRACTION=${TRAIN_FRACTION:-0.0625}
VOCAB_SIZE=${VOCAB_SIZE:-2000}           # joint sentencepiece BPE, sized for the small corpus
DATA_GIVEN=${DATA:+1}                    # derive() leaves a DATA that was set alone
UPDATES=${UPDATES:-480}                  # of every model
TOKENS=${TOKENS:-1024}                   # per batch of one all-reduce worker = one codistilled model
VALIDATE_GIVEN=${VALIDATE:-}             # updates between validations; default UPDATES / 12
DROPOUT=${DROPOUT:-0.1}
LR=${LR:-2e-3}
# What a pair shares every INTERVAL updates: distill (codistillation), localsgd or diloco.
METHOD=${METHOD:-distill}
# Codistillation: alpha0 x GAMMA per epoch, snapshots every INTERVAL updates, alpha 0 for
# the first BURN_IN updates, the MSE of logits (LOSS=kl: KL), snapshots in SNAPSHOT
# (recipes/study.sh measured these: docs/study.md, docs/study-earlier.md).
ALPHA=${ALPHA:-0.1}
GAMMA=${GAMMA:-1.1}
INTERVAL=${INTERVAL:-40}
BURN_IN=${BURN_IN:-0}
LOSS=${LOSS:-mse}
SNAPSHOT=${SNAPSHOT:-fp16}
# DiLoCo's outer SGD: the task's defaults (momentum 0.5: DiLoCo's 0.9 fails with few outer steps)
OUTER_LR=${OUTER_LR:-0.7}
OUTER_MOMENTUM=${OUTER_MOMENTUM:-0.5}
# LocalSGD and DiLoCo: 1 averages with the newest snapshot of each peer without waiting
# (--codistill-async), 0 waits for every model at each averaging step.
ASYNC=${ASYNC:-0}
# Equal wall time: BUDGET seconds of training per model (fairseq's --stop-time-hours; the
# updates then run to whatever the budget allows, the schedule still follows UPDATES).
BUDGET=${BUDGET:-}
# ... and no more than MAX_UPDATES updates (default 8 x UPDATES): a guard, which a small model
# fast enough to reach it within its budget needs raised to train for the whole budget.
MAX_UPDATES=${MAX_UPDATES:-}
# Faults of model 1 (of the all-reduce job's rank 1), as fairseq-codistill-launch runs them:
# SLOWDOWN=F, F times slower throughout; PREEMPT=AT:FOR, killed AT seconds after its start
# and back FOR seconds later from its checkpoint_last.pt.
SLOWDOWN=${SLOWDOWN:-}
PREEMPT=${PREEMPT:-}
# All-reduce: 1 runs it as its one-process equivalent (--update-freq 2); 2 as a real job of
# 2 gloo ranks under fairseq-codistill-launch, whose pace (and a slowed rank's) is measured.
RANKS=${RANKS:-1}
PEER_LAYERS=${PEER_LAYERS:-}             # model 1 of a pair with this many layers (default LAYERS)
PEER_DIM=${PEER_DIM:-}                   # ... and of this width (default DIM)
# train_kd: the teacher's share of the budget (the student has the rest; with no budget each
# phase trains UPDATES updates), and the student's penalty: KD_ALPHA (constant) times KD_LOSS
# (kl: word-level KD on the teacher's distribution; mse: the logits' MSE, as codistillation).
TEACHER_SHARE=${TEACHER_SHARE:-0.5}
KD_LOSS=${KD_LOSS:-kl}
KD_ALPHA=${KD_ALPHA:-1}
DEVICE=${DEVICE:-cpu}                    # cpu, or cuda: every run on the visible GPU
# auto: bf16 where the device is fast at it (a CPU with AMX-BF16 or AVX512-BF16, a GPU with
# bf16), fp16 on a GPU without bf16, fp32 elsewhere; or set it.
PRECISION=${PRECISION:-auto}
if [[ "$PRECISION" == auto ]]; then
    PRECISION=$("$PYTHON" -m fairseq_codistill.core.precision --device "$DEVICE")
fi
THREADS=${THREADS:-$(nproc)}             # CPU cores in all
# Models of a pair meet at each exchange (wait until the peer has published the same
# update): which peer version a model reads no longer depends on the scheduler.
MAX_LEAD=${MAX_LEAD:-1}
WAIT_FOR_PEERS=${WAIT_FOR_PEERS:-600}
SAVE=${SAVE:-1}                          # 0: no checkpoints (only the logs)
# 1: a checkpoint at each validation, so checkpoint_best.pt is the best by validation NLL
# (what a fairseq user keeps) beside checkpoint_last.pt.
SAVE_BEST=${SAVE_BEST:-0}
EVAL_BEAM=${EVAL_BEAM:-4}
FAIRSEQ_TRAIN=${FAIRSEQ_TRAIN:-fairseq-train}

SRC=${LANG_PAIR%-*}
TGT=${LANG_PAIR#*-}

# derive: what follows from the knobs above (call it again after changing them).
derive() {
    if [[ -z "$DATA_GIVEN" ]]; then DATA=data-bin/gettext.$LANG_PAIR.frac$TRAIN_FRACTION.v$VOCAB_SIZE; fi
    BIN=$DATA/bin
    VALIDATE=${VALIDATE_GIVEN:-$(( UPDATES / 12 > 1 ? UPDATES / 12 : 1 ))}
}
derive

# A transformer small enough for a CPU: LAYERS+LAYERS layers of width DIM, pre-norm so that a
# short warm-up at a high learning rate stays stable, embeddings shared (a joint vocabulary).
LAYERS=${LAYERS:-3}
DIM=${DIM:-256}
# SIZE_ARGS for a model of LAYERS+LAYERS layers of width DIM, its feed-forward layers twice
# as wide: every model's size, model 0's and a heterogeneous pair's model 1, follows this rule.
size_args() {
    local layers=$1 dim=$2
    SIZE_ARGS=(
        --encoder-layers "$layers" --decoder-layers "$layers"
        --encoder-embed-dim "$dim" --decoder-embed-dim "$dim"
        --encoder-ffn-embed-dim "$(( 2 * dim ))" --decoder-ffn-embed-dim "$(( 2 * dim ))"
    )
}
model_args() {
    local dropout=$1
    size_args "$LAYERS" "$DIM"
    MODEL_ARGS=(
        --arch transformer "${SIZE_ARGS[@]}"
        --encoder-attention-heads 4 --decoder-attention-heads 4
        --encoder-normalize-before --decoder-normalize-before
        --share-all-embeddings
        --dropout "$dropout"
    )
}

# TRAIN_ARGS for SEED and DROPOUT, the best checkpoint by validation METRIC (nll_loss, or
# loss for plain cross-entropy, which logs its NLL as loss). --required-batch-size-multiple
# 1: with fairseq's default of 8 the last batch of a split is dropped when it is not full,
# so some valid sentences would never be scored.
train_args() {
    local seed=$1 dropout=$2 metric=${3:-nll_loss}
    model_args "$dropout"
    TRAIN_ARGS=(
        "$BIN" --source-lang "$SRC" --target-lang "$TGT"
        "${MODEL_ARGS[@]}"
        --optimizer adam --adam-betas "(0.9, 0.98)"
        --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$(( UPDATES / 8 > 1 ? UPDATES / 8 : 1 ))"
        --max-tokens "$TOKENS"
        --validate-interval-updates "$VALIDATE" --validate-interval 1000000
        --log-format json --log-interval "$(( VALIDATE / 2 > 1 ? VALIDATE / 2 : 1 ))" --no-progress-bar
        --num-workers 0 --seed "$seed"
        --required-batch-size-multiple 1
        --task codistill_translation
        --user-dir "$PLUGIN"
    )
    if [[ -n "$BUDGET" ]]; then  # the budget ends the run, wherever it has got to
        TRAIN_ARGS+=(--max-update "${MAX_UPDATES:-$(( 8 * UPDATES ))}"
                     --stop-time-hours "$("$PYTHON" -c "print(round($BUDGET / 3600, 6))")")
    else
        TRAIN_ARGS+=(--max-update "$UPDATES")
    fi
    if [[ "$SAVE" != 1 ]]; then
        TRAIN_ARGS+=(--no-save)
    elif [[ "$SAVE_BEST" == 1 ]]; then
        TRAIN_ARGS+=(--no-epoch-checkpoints --save-interval-updates "$VALIDATE" --keep-interval-updates 1
                     --best-checkpoint-metric "$metric")
    else
        TRAIN_ARGS+=(--no-epoch-checkpoints)
    fi
    if [[ "$DEVICE" == cpu ]]; then TRAIN_ARGS+=(--cpu); fi
    case "$PRECISION" in
        bf16 | fp16) TRAIN_ARGS+=("--$PRECISION") ;;
        fp32) ;;
        *) echo "PRECISION=$PRECISION: use auto, fp32, bf16 or fp16" >&2; return 1 ;;
    esac
}

# A run is done when DIR/done records the same settings; otherwise it starts afresh.
settings() {
    printf '%s ' "$@" "$UPDATES" "$TOKENS" "$LR" "$DATA" "$PRECISION" "$DEVICE" "$LAYERS" "$DIM" "save=$SAVE$SAVE_BEST"
    # the scenario's knobs, where set
    if [[ -n "$BUDGET$SLOWDOWN$PREEMPT" || "$RANKS" != 1 ]]; then
        printf '%s ' "budget=$BUDGET" "slowdown=$SLOWDOWN" "preempt=$PREEMPT" "ranks=$RANKS" ${MAX_UPDATES:+"max_updates=$MAX_UPDATES"}
    fi
}
# A pair's settings: those of every run and what it shares.
pair_settings() {
    local seed=$1
    if [[ "$METHOD" == distill ]]; then
        settings pair "$seed" "$DROPOUT" "$ALPHA" "$GAMMA" "$INTERVAL" "$BURN_IN" "$LOSS" \
            "snapshot=$SNAPSHOT" "peer_layers=$PEER_LAYERS${PEER_DIM:+ peer_dim=$PEER_DIM}" "lead=$MAX_LEAD"
    else
        local outer=()
        if [[ "$METHOD" == diloco ]]; then outer=("outer=$OUTER_LR,$OUTER_MOMENTUM"); fi
        settings "$METHOD" "$seed" "$DROPOUT" "$INTERVAL" "snapshot=$SNAPSHOT" "${outer[@]}" "async=$ASYNC"
    fi
}
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
    local allreduce=(--criterion label_smoothed_cross_entropy --label-smoothing 0.1)
    if [[ "$RANKS" == 1 ]]; then
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$FAIRSEQ_TRAIN" "${TRAIN_ARGS[@]}" \
            "${allreduce[@]}" --codistill-num-models 1 --update-freq 2 --save-dir "$dir" > "$dir/train.log" 2>&1
    else  # a real job of RANKS gloo ranks, each with one worker's batch
        local faults=()
        fault_args "0/$(( RANKS - 1 ))"
        fairseq-codistill-launch \
            --num-models 1 --ranks-per-model "$RANKS" --threads-per-model 1 "${faults[@]}" \
            --save-dir "$dir/job" --fairseq-train "$(command -v "$FAIRSEQ_TRAIN")" \
            --progress-interval "${PROGRESS_INTERVAL:-600}" \
            -- "${TRAIN_ARGS[@]}" "${allreduce[@]}" > "$dir/launch.log" 2>&1
        # one model: its log and checkpoints where a one-process run keeps them
        mv "$dir/job/model0"/* "$dir/" && mv "$dir/job/launch.json" "$dir/" && rm -rf "$dir/job"
    fi
    echo "$stamp" > "$dir/done"
}

# fault_args WHO: FAULTS, the launcher's flags for SLOWDOWN and PREEMPT of WHO (a model id,
# or MODEL/RANK); the preempted one's budget is shortened by the time it is away, so that it
# ends near the others in wall time (less the work it lost since its last checkpoint).
fault_args() {
    local who=$1
    faults=()
    if [[ -n "$SLOWDOWN" ]]; then faults+=(--slowdown "$who:$SLOWDOWN"); fi
    if [[ -n "$PREEMPT" ]]; then
        faults+=(--preempt "${who%%/*}:$PREEMPT")
        if [[ -n "$BUDGET" ]]; then
            faults+=(--model-args "${who%%/*}" "--stop-time-hours $("$PYTHON" -c "print(round(($BUDGET - ${PREEMPT#*:}) / 3600, 6))")")
        fi
    fi
}

train_control() {
    local dir=$1 seed=$2 dropout=${3:-$DROPOUT} stamp
    stamp=$(settings control "$seed" "$dropout")
    fresh "$dir" "$stamp" || return 0
    train_args "$seed" "$dropout" loss
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$FAIRSEQ_TRAIN" "${TRAIN_ARGS[@]}" \
        --codistill-num-models 1 --criterion cross_entropy \
        --save-dir "$dir" > "$dir/train.log" 2>&1
    echo "$stamp" > "$dir/done"
}

# train_kd DIR SEED: DIR/teacher (PEER_LAYERS layers, plain cross-entropy, alone) for
# TEACHER_SHARE of BUDGET, its best checkpoint published as model 1 of DIR/exchange
# (fairseq-codistill-teacher), then DIR/model0, the student (LAYERS layers), for the rest:
# model 0 of 2, penalised by KD_ALPHA x KD_LOSS against the fixed teacher. Each phase has all
# THREADS; the same cores for the same wall time as a pair, one model after the other.
train_kd() {
    local dir=$1 seed=$2 stamp teacher_budget='' student_budget=''
    stamp=$(settings kd "$seed" "$DROPOUT" "teacher=${PEER_LAYERS:?train_kd: set PEER_LAYERS (layers of the teacher)}${PEER_DIM:+x$PEER_DIM}" \
        "share=$TEACHER_SHARE" "$KD_LOSS" "$KD_ALPHA" "$INTERVAL" "snapshot=$SNAPSHOT")
    fresh "$dir" "$stamp" || return 0
    if [[ -n "$BUDGET" ]]; then
        teacher_budget=$("$PYTHON" -c "print(round($TEACHER_SHARE * $BUDGET, 1))")
        student_budget=$("$PYTHON" -c "print(round($BUDGET - $teacher_budget, 1))")
    fi
    # the teacher: the big model alone, trained as a control line trains it
    LAYERS=$PEER_LAYERS DIM=${PEER_DIM:-$DIM} BUDGET=$teacher_budget train_control "$dir/teacher" "$seed"
    local teacher=$dir/teacher/checkpoint_best.pt
    [[ -f "$teacher" ]] || teacher=$dir/teacher/checkpoint_last.pt
    fairseq-codistill-teacher "$teacher" --codistill-dir "$dir/exchange" --codistill-id 1 \
        --codistill-snapshot-dtype "$SNAPSHOT" --data "$BIN" > "$dir/teacher/publish.log" 2>&1 || return 1
    mkdir -p "$dir/model0"
    BUDGET=$student_budget train_args "$seed" "$DROPOUT"
    # the teacher never publishes again: the student never waits for it
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$FAIRSEQ_TRAIN" "${TRAIN_ARGS[@]}" \
        --criterion codistill_ce --codistill-dir "$dir/exchange" --codistill-id 0 \
        --codistill-num-models 2 --codistill-interval "$INTERVAL" --codistill-loss "$KD_LOSS" \
        --codistill-alpha-schedule constant --codistill-alpha "$KD_ALPHA" \
        --codistill-max-lead 0 --codistill-wait-for-peers 0 \
        --save-dir "$dir/model0" > "$dir/model0/train.log" 2>&1 || return 1
    if [[ "${KEEP_CHECKPOINTS:-0}" != 1 ]]; then rm -f "$dir/teacher"/checkpoint*.pt; fi
    rm -rf "$dir/exchange"
    echo "$stamp" > "$dir/done"
}

# The pair's threads: THREADS shared by its 2 models.
train_pair() {
    local dir=$1 seed=$2 stamp shared=()
    stamp=$(pair_settings "$seed")
    fresh "$dir" "$stamp" || return 0
    train_args "$seed" "$DROPOUT"
    if [[ "$METHOD" == distill ]]; then
        local schedule=exponential
        if [[ "$GAMMA" == 1 ]]; then schedule=constant; fi
        shared=(--criterion codistill_ce
                --codistill-alpha "$ALPHA" --codistill-alpha-schedule "$schedule" --codistill-gamma "$GAMMA"
                --codistill-burn-in-updates "$BURN_IN" --codistill-loss "$LOSS"
                --codistill-max-lead "$MAX_LEAD")
    else  # they share weights: any criterion, so the baseline's
        shared=(--criterion label_smoothed_cross_entropy --label-smoothing 0.1 --codistill-method "$METHOD"
                --codistill-outer-lr "$OUTER_LR" --codistill-outer-momentum "$OUTER_MOMENTUM")
        if [[ "$ASYNC" == 1 ]]; then shared+=(--codistill-async); fi
    fi
    local faults=() wait=$WAIT_FOR_PEERS
    fault_args 1
    # codistillation that never waits: not even for a peer's first snapshot
    if [[ "$METHOD" == distill && "$MAX_LEAD" == 0 ]]; then wait=0; fi
    local devices=(--threads-per-model "$(( THREADS / 2 > 1 ? THREADS / 2 : 1 ))")
    if [[ "$DEVICE" == cuda ]]; then devices=(--share-gpus); fi
    if [[ -n "$PEER_LAYERS$PEER_DIM" ]]; then  # a heterogeneous pair: model 1 of another depth or width
        size_args "${PEER_LAYERS:-$LAYERS}" "${PEER_DIM:-$DIM}"
        devices+=(--model-args 1 "${SIZE_ARGS[*]}")
    fi
    fairseq-codistill-launch \
        --num-models 2 "${devices[@]}" "${faults[@]}" \
        --codistill-dir "$dir/exchange" --save-dir "$dir" \
        --fairseq-train "$(command -v "$FAIRSEQ_TRAIN")" \
        --progress-interval "${PROGRESS_INTERVAL:-600}" \
        -- "${TRAIN_ARGS[@]}" "${shared[@]}" \
        --codistill-interval "$INTERVAL" --codistill-snapshot-dtype "$SNAPSHOT" \
        --codistill-wait-for-peers "$wait" \
        > "$dir/launch.log" 2>&1
    rm -rf "$dir/exchange"
    echo "$stamp" > "$dir/done"
}

# evaluate DIR CHECKPOINT OUT: BLEU and chrF (sacrebleu, beam EVAL_BEAM) on the test split
# of the model(s) CHECKPOINT (a:b for an ensemble) into DIR/OUT.json; with SCORE_VALID=1
# also the validation NLL of the references (an ensemble has no training log). Skipped
# when DIR/OUT.json is newer than every checkpoint; returns 1 then.
evaluate() {
    local dir=$1 path=$2 out=$3 checkpoint fresh=1 generate
    local -a checkpoints
    IFS=: read -r -a checkpoints <<< "$path"
    for checkpoint in "${checkpoints[@]}"; do
        [[ "$dir/$out.json" -nt "$checkpoint" ]] || fresh=0
    done
    if (( fresh )); then return 1; fi
    generate=(
        fairseq-generate "$BIN" --source-lang "$SRC" --target-lang "$TGT"
        --path "$path" --user-dir "$PLUGIN" --max-tokens 4096
        --required-batch-size-multiple 1
    )
    if [[ "$DEVICE" == cpu ]]; then generate+=(--cpu); fi
    mkdir -p "$dir"
    local scored=()
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "${generate[@]}" --gen-subset test \
        --beam "$EVAL_BEAM" --max-len-a 1.2 --max-len-b 10 --post-process sentencepiece \
        > "$dir/$out-test.txt" 2> "$dir/$out-test.log" \
        || { tail -n 20 "$dir/$out-test.log" >&2; return 2; }
    if [[ "${SCORE_VALID:-0}" == 1 ]]; then
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "${generate[@]}" --gen-subset valid \
            --score-reference > "$dir/$out-valid.txt" 2> "$dir/$out-valid.log" \
            || { tail -n 20 "$dir/$out-valid.log" >&2; return 2; }
        scored=(--score-reference "$dir/$out-valid.txt")
    fi
    "$PYTHON" -m fairseq_codistill.tools.evaluate \
        --generate "$dir/$out-test.txt" --reference "$DATA/raw/test.$TGT" \
        "${scored[@]}" --checkpoint "$path" --out "$dir/$out.json" > /dev/null
}

# evaluate_run DIR: eval.json (checkpoint_last.pt) and eval-best.json (checkpoint_best.pt)
# of DIR, or of each DIR/model*, one model per thread; then their checkpoints are deleted
# unless KEEP_CHECKPOINTS=1 (a study keeps what it measured, not 100 MB per model). Where
# the best checkpoint is the last (fairseq copies one save to both, so the files are the
# same bytes), eval-best.json is eval.json's scores, not a second decode.
evaluate_run() {
    local dir=$1 models=() d pids=() pid failed=0
    if [[ -f "$dir/train.log" ]]; then models=("$dir"); else models=("$dir"/model[0-9]*); fi
    for d in "${models[@]}"; do
        (
            for which in last best; do
                local name=eval
                [[ "$which" == best ]] && name=eval-best
                if [[ ! -f "$d/checkpoint_$which.pt" ]]; then continue; fi
                if [[ "$which" == best && "$d/eval.json" -nt "$d/checkpoint_last.pt" ]] \
                        && cmp -s "$d/checkpoint_last.pt" "$d/checkpoint_best.pt"; then
                    "$PYTHON" -m fairseq_codistill.tools.evaluate --same-as "$d/eval.json" \
                        --checkpoint "$d/checkpoint_best.pt" --out "$d/eval-best.json" > /dev/null || exit 1
                    continue
                fi
                THREADS=1 evaluate "$d" "$d/checkpoint_$which.pt" "$name" || (( $? == 1 )) || exit 1
            done
        ) &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if (( failed )); then return 1; fi
    if [[ "${KEEP_CHECKPOINTS:-0}" != 1 ]]; then
        for d in "${models[@]}"; do rm -f "$d"/checkpoint*.pt; done
    fi
}

# prepare_data: the corpus, sentencepiece model and data-bin of DATA (skipped when there).
prepare_data() {
    OUT=$DATA LANG_PAIR=$LANG_PAIR TRAIN_FRACTION=$TRAIN_FRACTION VOCAB_SIZE=$VOCAB_SIZE \
        PYTHON=$PYTHON WORKERS=${THREADS:-2} bash "$REPO/data-prep/prepare-gettext.sh" | grep -v '^skip:'
}
