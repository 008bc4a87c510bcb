#!/usr/bin/env bash
# ResNet50 on ImageNet, synchronous SGD (all-reduce) over NGPU GPUs: Goyal et al.'s recipe,
# the paper's baseline (16 GPUs x 32 images, 90 epochs, x0.1 at 30, 60, 80, weight decay
# 1e-4: 76.1% top-1). Shared parts: resnet50_imagenet_common.sh. Logs, checkpoints and
# metrics.jsonl (one JSON line per epoch) go to SAVE_DIR.
#
#   DATA=/path/to/imagenet SAVE_DIR=runs/resnet50_allreduce \
#       bash recipes/resnet50_imagenet_allreduce.sh [fairseq-codistill-vision args...]
#   TINY=1 SAVE_DIR=/tmp/smoke bash recipes/resnet50_imagenet_allreduce.sh   # CPU smoke test
#   AMP=fp16 CHANNELS_LAST=0 COMPILE=1 ...  # precision and speed (default: bf16 on GPUs that have it)
set -euo pipefail
# shellcheck source=recipes/resnet50_imagenet_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/resnet50_imagenet_common.sh"

: "${SAVE_DIR:?set SAVE_DIR to a directory for the checkpoints, metrics.jsonl and train.log}"
PRESET=${PRESET:-goyal-allreduce}   # or cosine: PRESET=goyal-allreduce ... --lr-schedule cosine

train_allreduce "$@"
