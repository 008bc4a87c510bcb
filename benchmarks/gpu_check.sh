#!/usr/bin/env bash
# One call on a machine with one CUDA GPU, torch and fairseq: the figures of docs/performance.md
# that need a GPU, in under 8 minutes (about 6 on an A100/H100).
#
#   bash benchmarks/gpu_check.sh                      # from the repository root
#   DEVICE=cpu bash benchmarks/gpu_check.sh           # the same steps at smoke sizes (tests;
#                                                     # bf16 where the CPU has it fast, else fp32)
#
# 1. step overhead, codistill_ce / cross_entropy update with one peer (target <= 1.25), in
#    fp16 and bf16: the IWSLT transformer at 4096 tokens, transformer-big (WMT) at 8192;
# 2. the peer's memory (benchmarks/memory.py), fp16 and bf16;
# 3. ResNet-50 (torchvision) with AMP: images/s of one model alone, and codistilling with
#    its pair's snapshot (the other model ran first and published);
# 4. two NMT models codistilling on the device for NMT_UPDATES updates (synthetic corpus).
# Without fairseq-train on PATH, fairseq runs as `python3 -m fairseq_cli.train` (see
# /work/shared/gpu/README.md). Every step's output goes to RESULTS_DIR/<step>.txt, each
# written whole (temp file, then rename); the summary lines go to RESULTS_DIR/summary.txt.
set -euo pipefail

DEVICE=${DEVICE:-cuda}                      # cuda, or cpu for the smoke sizes
QUICK=${QUICK:-$([[ "$DEVICE" == cpu ]] && echo 1 || echo 0)}
PYTHON=${PYTHON:-python3}
RESULTS_DIR=${RESULTS_DIR:-${OUT:-gpu_check}}
REPS=${REPS:-$([[ "$QUICK" == 1 ]] && echo 1 || echo 8)}   # timed rounds of step_overhead
NMT_UPDATES=${NMT_UPDATES:-$([[ "$QUICK" == 1 ]] && echo 20 || echo 300)}
VISION_UPDATES=${VISION_UPDATES:-$([[ "$QUICK" == 1 ]] && echo 16 || echo 300)}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$DEVICE" == cpu ]]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
if command -v fairseq-train > /dev/null; then
    FAIRSEQ_TRAIN=(fairseq-train)
    FAIRSEQ_PREPROCESS=(fairseq-preprocess)
else
    FAIRSEQ_TRAIN=("$PYTHON" -m fairseq_cli.train)
    FAIRSEQ_PREPROCESS=("$PYTHON" -m fairseq_cli.preprocess)
fi

# Half precisions to measure: fairseq's --fp16 needs CUDA; bf16 where the GPU has it. On a
# CPU, bf16 where it is fast (AMX, AVX512-BF16); elsewhere it is emulated and several times
# slower than fp32, so the smoke run measures fp32 (--amp none).
FAST=$("$PYTHON" -m fairseq_codistill.core.precision --device "$DEVICE")
if [[ "$DEVICE" == cuda ]]; then
    [[ "$FAST" != fp32 ]] || { echo "gpu_check: no CUDA GPU visible (DEVICE=cpu for the smoke run)" >&2; exit 1; }
    HALVES=(fp16)
    if [[ "$FAST" == bf16 ]]; then HALVES+=(bf16); fi
else
    HALVES=("$FAST")
fi
if [[ "$FAST" == fp32 ]]; then AMP=none; else AMP=$FAST; fi
# precision_flag P: fairseq's flag for P (none for fp32)
precision_flag() { if [[ "$1" != fp32 && "$1" != none ]]; then echo "--$1"; fi; }
QUICK_FLAG=()
if [[ "$QUICK" == 1 ]]; then QUICK_FLAG=(--quick); fi

say() { printf '[gpu_check] %s\n' "$*"; }

# step NAME CMD...: run CMD, show its output, keep it as RESULTS_DIR/NAME.txt (whole or
# not at all) and its "ratio" lines, prefixed with NAME, in the summary.
step() {
    local name=$1 tmp
    shift
    say "$name: $*"
    tmp=$(mktemp "$RESULTS_DIR/.tmp-$name.XXXXXX")
    "$@" 2>&1 | tee "$tmp"
    mv "$tmp" "$RESULTS_DIR/$name.txt"
    grep '^ratio ' "$RESULTS_DIR/$name.txt" | sed "s/^/$name: /" >> "$WORK/summary.txt" || true
}

# -- 1, 2: step overhead and peer memory -----------------------------------------------
if [[ "$QUICK" == 1 ]]; then
    # The big model's layout on a CPU would take minutes per update: its vocabulary only.
    BIG=(--arch transformer_iwslt_de_en --src-vocab 32768 --tgt-vocab 32768 --max-tokens 512)
else
    BIG=(--arch transformer_vaswani_wmt_en_de_big --src-vocab 32768 --tgt-vocab 32768 --max-tokens 8192)
fi
for half in "${HALVES[@]}"; do
    read -r -a flag <<< "$(precision_flag "$half")"
    step "step_overhead_iwslt_$half" "$PYTHON" "$ROOT/benchmarks/step_overhead.py" \
        --device "$DEVICE" "${flag[@]}" --reps "$REPS" "${QUICK_FLAG[@]}"
    step "step_overhead_big_$half" "$PYTHON" "$ROOT/benchmarks/step_overhead.py" \
        --device "$DEVICE" "${flag[@]}" --reps "$REPS" "${BIG[@]}"
    step "memory_$half" "$PYTHON" "$ROOT/benchmarks/memory.py" \
        --device "$DEVICE" "${flag[@]}" "${QUICK_FLAG[@]}"
done

# -- 3: ResNet-50 images/s, alone and codistilling ----------------------------------------
if [[ "$QUICK" == 1 ]]; then
    VISION=(--arch resnet8 --image-size 16 --num-classes 10 --batch-size 8 --workers 0 --cpu)
    BATCH=8
else
    BATCH=${VISION_BATCH:-128}
    VISION=(--arch resnet50 --image-size 224 --num-classes 1000 --batch-size "$BATCH" --workers 8
            --channels-last)
fi
VISION+=(--dummy --dummy-train-size "$(( VISION_UPDATES * BATCH ))" --dummy-val-size "$BATCH"
         --epochs 1 --warmup-epochs 0 --lr-milestones "" --print-freq 0 --amp "$AMP")
INTERVAL=$(( VISION_UPDATES / 4 > 1 ? VISION_UPDATES / 4 : 1 ))
vision() { "$PYTHON" -m fairseq_codistill.vision "${VISION[@]}" "$@"; }
# rate DIR: "images/s num_peers" of the run's one epoch (its validation is one batch)
rate() {
    "$PYTHON" - "$1/metrics.jsonl" "$BATCH" <<'EOF'
import json, sys
record = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"{record['updates'] * int(sys.argv[2]) / record['seconds']:.1f} {record.get('num_peers', 0)}")
EOF
}
vision_check() {
    vision --save-dir "$WORK/v1" --codistill-dir "$WORK/vx" --codistill-id 1 --codistill-interval "$INTERVAL"
    vision --save-dir "$WORK/v0" --codistill-dir "$WORK/vx" --codistill-id 0 --codistill-interval "$INTERVAL"
    vision --save-dir "$WORK/alone"
    local alone with peers
    read -r alone _ <<< "$(rate "$WORK/alone")"
    read -r with peers <<< "$(rate "$WORK/v0")"
    echo "time  images/s alone $alone, codistilling $with (num_peers $peers); --amp $AMP, batch $BATCH"
    "$PYTHON" - "$alone" "$with" <<'EOF'
import sys
alone, codistilling = map(float, sys.argv[1:])
ratio = alone / codistilling
print(f"ratio vision_overhead = {ratio:.4g}   (images/s alone / codistilling)   "
      f"target <= 1.25: {'met' if ratio <= 1.25 else 'MISSED'}")
EOF
}
step vision vision_check

# -- 4: two NMT models codistilling on the device -----------------------------------------
make_corpus() {  # a learnable toy task: the target is the source reversed, upper-cased
    "$PYTHON" - "$WORK/text" <<'EOF'
import os, random, sys
out, rng = sys.argv[1], random.Random(0)
os.makedirs(out, exist_ok=True)
words = [f"w{i}" for i in range(500)]
for split, n in (("train", 20000), ("valid", 500)):
    with open(f"{out}/{split}.src", "w") as s, open(f"{out}/{split}.tgt", "w") as t:
        for _ in range(n):
            toks = [rng.choice(words) for _ in range(rng.randint(5, 30))]
            s.write(" ".join(toks) + "\n")
            t.write(" ".join(reversed(toks)).upper() + "\n")
EOF
    "${FAIRSEQ_PREPROCESS[@]}" --source-lang src --target-lang tgt --trainpref "$WORK/text/train" \
        --validpref "$WORK/text/valid" --destdir "$WORK/bin" --joined-dictionary --workers 4 > "$WORK/preprocess.log" 2>&1
}
nmt_check() {
    make_corpus
    local arch=(--arch transformer_iwslt_de_en --share-all-embeddings --max-tokens 4096) pids=() i
    if [[ "$QUICK" == 1 ]]; then
        arch=(--arch transformer --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 32
              --decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64
              --encoder-attention-heads 2 --decoder-attention-heads 2 --max-tokens 512)
    fi
    local device=(); if [[ "$DEVICE" == cpu ]]; then device=(--cpu); fi
    local amp_flag; read -r -a amp_flag <<< "$(precision_flag "$AMP")"
    for i in 0 1; do
        "${FAIRSEQ_TRAIN[@]}" "$WORK/bin" --user-dir "$ROOT/fairseq_codistill" \
            --task codistill_translation --criterion codistill_ce \
            "${arch[@]}" "${device[@]}" "${amp_flag[@]}" \
            --optimizer adam --adam-betas "(0.9, 0.98)" --lr 1e-3 --lr-scheduler inverse_sqrt \
            --warmup-updates "$(( NMT_UPDATES / 5 ))" --max-update "$NMT_UPDATES" \
            --codistill-dir "$WORK/nx" --codistill-id "$i" --codistill-num-models 2 \
            --codistill-interval "$(( NMT_UPDATES / 5 ))" --codistill-wait-for-peers 120 \
            --codistill-max-lead "$(( NMT_UPDATES / 5 ))" \
            --log-format json --log-interval "$(( NMT_UPDATES / 10 ))" --no-progress-bar \
            --num-workers 0 --seed 1 --no-save --save-dir "$WORK/n$i" > "$WORK/nmt$i.log" 2>&1 &
        pids+=("$!")
    done
    for i in 0 1; do
        wait "${pids[i]}" || { echo "NMT model $i failed:"; tail -n 30 "$WORK/nmt$i.log"; return 1; }
        "$PYTHON" -m fairseq_codistill.tools.logs "$WORK/nmt$i.log" train_inner num_updates > /dev/null
        printf 'nmt   model %d: %s\n' "$i" "$("$PYTHON" - "$WORK/nmt$i.log" <<'EOF'
import sys
from fairseq_codistill.tools import logs
text = open(sys.argv[1]).read()
get = lambda tag, key: logs.last_value(text, tag, key)
print(f"updates {get('train_inner', 'num_updates'):.0f}, loss {get('train_inner', 'loss')}, "
      f"codistill_loss {get('train_inner', 'codistill_loss')}, num_peers {get('train_inner', 'num_peers')}, "
      f"updates/s {get('train_inner', 'ups')}, valid nll_loss {get('valid', 'nll_loss')}")
EOF
)"
    done
}
step nmt nmt_check

say "machine: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch", torch.__version__)')"
say "summary (also $RESULTS_DIR/summary.txt):"
cat "$WORK/summary.txt"
mv "$WORK/summary.txt" "$RESULTS_DIR/summary.txt"
