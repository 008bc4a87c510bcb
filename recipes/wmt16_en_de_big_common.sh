# shellcheck shell=bash
# The "big" Transformer recipe of Ott et al. (2018, fairseq's examples/scaling_nmt), trained
# all-reduce or codistilled; sourced by recipes/{iwslt14,wmt16_en_de}_big_{allreduce,codistill}.sh
# (the paper trains this WMT'16 model on IWSLT'14 too), not run by itself.
#
# train_allreduce: one model, synchronous data-parallel SGD over NGPU GPUs, label smoothing 0.1.
# train_codistill: NUM_MODELS models on NGPU/NUM_MODELS GPUs each, launched by
#   fairseq-codistill-launch: the same per-model settings without label smoothing, plus
#   alpha x MSE(logits, peers' logits) with alpha growing 1.1x per epoch (the paper's NMT setup).
# An update of either takes BATCH micro-batches of MAX_TOKENS tokens in all: the all-reduce
# model's batch is the sum of the codistilled models' batches, and every model takes
# MAX_UPDATE updates. update-freq = BATCH / (GPUs of a job x models).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLUGIN=$REPO/fairseq_codistill
PYTHON=${PYTHON:-python3}

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

TINY=${TINY:-0}   # 1: a 2-layer, 32-dim model for 40 updates on the CPU, a smoke test of the chain
if [[ "$TINY" == 1 ]]; then
    : "${NGPU:=0}" "${BATCH:=2}" "${MAX_TOKENS:=512}" "${MAX_UPDATE:=40}" "${WARMUP:=10}" \
      "${LR:=1e-3}" "${AVG:=2}" "${INTERVAL:=5}" "${LOG_INTERVAL:=5}" \
      "${MAX_LEAD:=5}" "${WAIT_FOR_PEERS:=120}"  # CPU jobs start seconds apart: meet at exchanges
fi
# GPUs in all (default: all visible); 0 trains on the CPU, every job a single process.
NGPU=${NGPU:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || true)}
[[ "$NGPU" =~ ^[0-9]+$ ]] || die "NGPU='$NGPU': set NGPU to the number of GPUs (no torch in PYTHON=$PYTHON to count them)"
NUM_MODELS=${NUM_MODELS:-2}           # codistilled models; they share the NGPU GPUs
MAX_TOKENS=${MAX_TOKENS:-3584}        # per GPU and micro-batch (Ott et al.)
WARMUP=${WARMUP:-4000}                # inverse_sqrt warm-up updates (Ott et al.)
AVG=${AVG:-10}                        # last epoch checkpoints kept, and averaged by eval.sh
FP16=${FP16:-$(( NGPU > 0 ))}         # Ott et al. train in fp16; not on the CPU
SEED=${SEED:-1}
LOG_INTERVAL=${LOG_INTERVAL:-100}
ALPHA=${ALPHA:-0.1}                   # initial alpha (the paper's is unreported); 0.1 x1.1 beat a
                                      # lone model in the study (docs/study-earlier.md), 1.0 held
                                      # both back
GAMMA=${GAMMA:-1.1}                   # alpha x GAMMA every epoch (the paper's NMT schedule)
ALPHA_MAX=${ALPHA_MAX:-}              # optional cap on alpha
CODISTILL_DIR=${CODISTILL_DIR:-}      # exchange directory, on a filesystem all jobs see
MAX_LEAD=${MAX_LEAD:-0}               # >0: at each exchange, wait for peers further behind than this
WAIT_FOR_PEERS=${WAIT_FOR_PEERS:-0}   # seconds to wait for peers (first exchange; each, with MAX_LEAD)
THREADS_PER_MODEL=${THREADS_PER_MODEL:-}  # CPU jobs: threads each (default: cores / models)
RESTART_FAILED=${RESTART_FAILED:-0}   # 1: the launcher restarts a dead job from its last checkpoint
DRY_RUN=${DRY_RUN:-0}                 # 1: print the training command instead of running it

# MODEL_ARGS: the fairseq-train arguments every model gets, all-reduce or codistilled.
model_args() {
    [[ -d "$DATA" ]] || die "DATA=$DATA: no such directory (run data-prep/ first)"
    MODEL_ARGS=("$DATA" --user-dir "$PLUGIN")
    if [[ "$TINY" == 1 ]]; then
        MODEL_ARGS+=(
            --arch transformer --encoder-layers 2 --decoder-layers 2
            --encoder-embed-dim 32 --decoder-embed-dim 32
            --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
            --encoder-attention-heads 2 --decoder-attention-heads 2
            --num-workers 0
        )
    else
        MODEL_ARGS+=(--arch transformer_vaswani_wmt_en_de_big)
    fi
    MODEL_ARGS+=(
        --share-all-embeddings
        --optimizer adam --adam-betas "(0.9, 0.98)" --clip-norm 0.0
        --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
        --dropout 0.3 --weight-decay 0.0
        --max-tokens "$MAX_TOKENS" --max-update "$MAX_UPDATE"
        --keep-last-epochs "$AVG"
        --seed "$SEED"
        --log-format json --log-interval "$LOG_INTERVAL" --no-progress-bar
    )
    if [[ "$FP16" == 1 ]]; then MODEL_ARGS+=(--fp16); fi
}

# update_freq WORKERS MODELS: micro-batches per update of each of WORKERS processes.
update_freq() {
    local workers=$1 models=$2
    (( BATCH % (workers * models) == 0 )) \
        || die "BATCH=$BATCH micro-batches do not split over $models model(s) x $workers" \
               "GPU(s) each: make BATCH a multiple of $(( workers * models )) or change NGPU"
    echo $(( BATCH / (workers * models) ))
}

# run LOG CMD...: CMD with its output also appended to LOG; with DRY_RUN=1 only printed.
run() {
    local log=$1
    shift
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "$@"
        echo
        return 0
    fi
    mkdir -p "$SAVE_DIR"
    # what eval.sh needs to evaluate this run the way the recipe means it
    printf '%s\n' "DATA=$(cd "$DATA" && pwd)" "BEAM=$BEAM" "LENPEN=$LENPEN" "AVG=$AVG" \
        > "$SAVE_DIR/eval.env"
    echo "$(basename "$0"): logging to $log"
    "$@" 2>&1 | tee -a "$log"
}

train_allreduce() {
    model_args
    local devices=(--cpu) workers=1
    if (( NGPU > 0 )); then devices=(--distributed-world-size "$NGPU"); workers=$NGPU; fi
    local freq
    freq=$(update_freq "$workers" 1)
    run "$SAVE_DIR/train.log" fairseq-train "${MODEL_ARGS[@]}" \
        "${devices[@]}" --update-freq "$freq" \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --save-dir "$SAVE_DIR" \
        "$@"
}

train_codistill() {
    model_args
    (( NGPU % NUM_MODELS == 0 )) \
        || die "NGPU=$NGPU GPUs do not split evenly over NUM_MODELS=$NUM_MODELS models"
    local gpus=$(( NGPU / NUM_MODELS ))
    local freq
    freq=$(update_freq "$(( gpus > 0 ? gpus : 1 ))" "$NUM_MODELS")
    local launch=(--num-models "$NUM_MODELS" --gpus-per-model "$gpus")
    if [[ -n "$THREADS_PER_MODEL" ]]; then launch+=(--threads-per-model "$THREADS_PER_MODEL"); fi
    if [[ "$RESTART_FAILED" == 1 ]]; then launch+=(--restart-failed); fi
    local schedule=(--codistill-alpha "$ALPHA" --codistill-alpha-schedule exponential
                    --codistill-gamma "$GAMMA")
    if [[ -n "$ALPHA_MAX" ]]; then schedule+=(--codistill-alpha-max "$ALPHA_MAX"); fi
    run "$SAVE_DIR/launch.log" fairseq-codistill-launch "${launch[@]}" \
        --codistill-dir "${CODISTILL_DIR:-$SAVE_DIR/exchange}" --save-dir "$SAVE_DIR" \
        -- \
        "${MODEL_ARGS[@]}" --update-freq "$freq" \
        --task codistill_translation --criterion codistill_ce \
        "${schedule[@]}" --codistill-interval "$INTERVAL" \
        --codistill-max-lead "$MAX_LEAD" --codistill-wait-for-peers "$WAIT_FOR_PEERS" \
        "$@"
}
