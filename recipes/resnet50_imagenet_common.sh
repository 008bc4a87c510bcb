# shellcheck shell=bash
# ResNet50 (or ResNeXt101) on ImageNet after Goyal et al. (2017), as run by Sodhani et al.
# (2020); sourced by recipes/resnet50_imagenet_{allreduce,codistill}.sh, not run by itself.
#
# train_allreduce: one torchrun job, synchronous SGD over NGPU GPUs.
# train_codistill: NUM_MODELS torchrun jobs, each on its own NGPU/NUM_MODELS GPUs (slices of
#   CUDA_VISIBLE_DEVICES), exchanging weight snapshots through CODISTILL_DIR.
# Every process takes 32 images per update (Goyal et al.); a model's LR scales with its
# global batch, 0.1 per 256 images. The paper's numbers need NGPU=16: an all-reduce batch
# of 512, and two codistilled models of 256. On one node of 8 GPUs the batches halve and
# each epoch takes twice the updates: run the same presets and compare like with like.

PYTHON=${PYTHON:-python3}
TORCHRUN=${TORCHRUN:-torchrun}
TINY=${TINY:-0}   # 1: resnet8 on synthetic 16-px images for 2 epochs on the CPU, a smoke test
if [[ "$TINY" == 1 ]]; then
    : "${NGPU:=0}" "${ARCH:=resnet8}" "${WORKERS:=0}" "${INTERVAL:=5}"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # models share the cores; more threads only wait
fi
# GPUs in all (default: all visible); 0 trains on the CPU, one process per model.
NGPU=${NGPU:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || true)}
ARCH=${ARCH:-resnet50}        # any torchvision classifier, e.g. resnext101_32x8d
WORKERS=${WORKERS:-8}         # data-loading processes per GPU
SEED=${SEED:-0}               # codistilled model i uses SEED + i
DRY_RUN=${DRY_RUN:-0}         # 1: print the torchrun commands instead of running them
# Mixed precision: auto is bf16 on GPUs that support it (Ampere and later: no loss scaling,
# half the activation memory), else none (fp32; on older GPUs set AMP=fp16). Peers run in it.
AMP=${AMP:-auto}
CHANNELS_LAST=${CHANNELS_LAST:-$([[ "$NGPU" != 0 ]] && echo 1 || echo 0)}  # NHWC: tensor cores' layout
COMPILE=${COMPILE:-0}         # 1: torch.compile each model (minutes of compilation first)

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

[[ "$NGPU" =~ ^[0-9]+$ ]] || die "NGPU='$NGPU': set NGPU to the number of GPUs (no torch in PYTHON=$PYTHON to count them)"

# COMMON_ARGS: the data, loader and seed flags of every model.
common_args() {
    if [[ "$TINY" == 1 ]]; then
        COMMON_ARGS=(
            --dummy --image-size 16 --num-classes 10
            --dummy-train-size 320 --dummy-val-size 160 --batch-size 16
            --epochs 2 --warmup-epochs 0.5 --lr-milestones "1,1.5,1.75" --print-freq 10
        )
    else
        : "${DATA:?set DATA to the ImageNet root: train/ and val/ in ImageFolder layout}"
        [[ -d "$DATA" ]] || die "DATA=$DATA: no such directory"
        COMMON_ARGS=(--data "$DATA")
    fi
    COMMON_ARGS+=(--workers "$WORKERS" --seed "$SEED")
    speed_args
}

# speed_args: --amp, --channels-last and --compile from AMP, CHANNELS_LAST and COMPILE.
speed_args() {
    local amp=$AMP
    if [[ "$amp" == auto ]]; then
        amp=none
        if (( NGPU > 0 )) && [[ "$("$PYTHON" -m fairseq_codistill.core.precision --device cuda 2>/dev/null || true)" == bf16 ]]; then
            amp=bf16
        fi
    fi
    COMMON_ARGS+=(--amp "$amp")
    if [[ "$CHANNELS_LAST" == 1 ]]; then
        COMMON_ARGS+=(--channels-last)
    fi
    if [[ "$COMPILE" == 1 ]]; then
        COMMON_ARGS+=(--compile)
    fi
}

# gpu_slice START COUNT: COUNT of the visible GPUs (CUDA_VISIBLE_DEVICES, else 0..NGPU-1)
# from START, comma-separated; empty for COUNT 0, which hides the GPUs (the CPU).
gpu_slice() {
    local start=$1 count=$2 visible=()
    if (( NGPU > 0 )); then
        IFS=, read -r -a visible <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( NGPU - 1 )))}"
    fi
    (( start + count <= ${#visible[@]} )) \
        || die "NGPU=$NGPU but only ${#visible[@]} GPU(s) are visible (CUDA_VISIBLE_DEVICES)"
    local IFS=,
    echo "${visible[*]:start:count}"
}

# run_job LOG DEVICES NPROC ARGS...: one model's torchrun job on GPUs DEVICES, output
# appended to LOG; with DRY_RUN=1 only printed, as one line written at once.
run_job() {
    local log=$1 devices=$2 nproc=$3
    shift 3
    local cmd=("$TORCHRUN" --standalone --nproc-per-node "$nproc" -m fairseq_codistill.vision "$@")
    if [[ "$DRY_RUN" == 1 ]]; then
        local line
        printf -v line '%q ' "${cmd[@]}"
        echo "CUDA_VISIBLE_DEVICES=$devices $line"
        return 0
    fi
    mkdir -p "$(dirname "$log")"
    echo "$(basename "$0"): logging to $log"
    CUDA_VISIBLE_DEVICES="$devices" "${cmd[@]}" >> "$log" 2>&1
}

train_allreduce() {
    common_args
    run_job "$SAVE_DIR/train.log" "$(gpu_slice 0 "$NGPU")" "$(( NGPU > 0 ? NGPU : 1 ))" \
        "${COMMON_ARGS[@]}" --arch "$ARCH" --preset "$PRESET" \
        --save-dir "$SAVE_DIR" \
        "$@"
}

train_codistill() {
    common_args
    (( NUM_MODELS >= 2 )) || die "NUM_MODELS=$NUM_MODELS: codistillation needs 2 or more"
    (( NGPU % NUM_MODELS == 0 )) \
        || die "NGPU=$NGPU GPUs do not split evenly over NUM_MODELS=$NUM_MODELS models"
    local per=$(( NGPU / NUM_MODELS )) archs=() pids=() job=() i status=0
    (( NGPU == 0 || per > 0 )) || die "NGPU=$NGPU: fewer GPUs than NUM_MODELS=$NUM_MODELS"
    IFS=, read -r -a archs <<< "${ARCHS:-}"
    trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
    for (( i = 0; i < NUM_MODELS; i++ )); do
        job=("$SAVE_DIR/model$i/train.log" "$(gpu_slice $(( i * per )) "$per")" "$(( per > 0 ? per : 1 ))"
            "${COMMON_ARGS[@]}" --arch "${archs[i]:-$ARCH}" --preset "$PRESET"
            --save-dir "$SAVE_DIR/model$i"
            --codistill-dir "$CODISTILL_DIR" --codistill-id "$i" --codistill-num-models "$NUM_MODELS"
            --codistill-interval "$INTERVAL" --codistill-alpha "$ALPHA"
            "$@")
        if [[ "$DRY_RUN" == 1 ]]; then
            run_job "${job[@]}"  # in model order: background jobs would race to stdout
        else
            run_job "${job[@]}" &
            pids+=("$!")
        fi
    done
    for i in "${!pids[@]}"; do
        wait "${pids[i]}" || { status=$?; echo "$(basename "$0"): model $i failed (exit $status)" >&2; }
    done
    return "$status"
}
