#!/usr/bin/env bash
# ResNet50 on ImageNet, NUM_MODELS=2 codistilled models on NGPU/2 GPUs each, each a
# torchrun job with DistributedDataParallel inside; they exchange weight snapshots every
# INTERVAL updates and add ALPHA x MSE(logits, peer's logits) to their loss. The paper's
# adjusted recipe: 45 epochs, x0.1 at 18, 38, 44, weight decay 1e-4, 1e-5, 0 (75.9%
# top-1, against 76.1% all-reduce). PRESET=goyal-codistill is the unadjusted one (decays
# at 15, 30, 40, weight decay 1e-4), about 2% worse. Model i writes SAVE_DIR/model{i}/.
#
#   DATA=/path/to/imagenet SAVE_DIR=runs/resnet50_codistill \
#       bash recipes/resnet50_imagenet_codistill.sh [fairseq-codistill-vision args...]
#   ARCHS=resnet50,resnext101_32x8d ...   # models of different architectures
#   AMP=fp16 CHANNELS_LAST=0 COMPILE=1 ...  # precision and speed (default: bf16 on GPUs that have it)
#   TINY=1 SAVE_DIR=/tmp/smoke bash recipes/resnet50_imagenet_codistill.sh   # CPU smoke test
set -euo pipefail
# shellcheck source=recipes/resnet50_imagenet_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/resnet50_imagenet_common.sh"

: "${SAVE_DIR:?set SAVE_DIR to a directory for the models, their logs and the exchange}"
PRESET=${PRESET:-goyal-codistill-adjusted}
NUM_MODELS=${NUM_MODELS:-2}
ARCHS=${ARCHS:-}                            # comma-separated, one per model (default: ARCH)
CODISTILL_DIR=${CODISTILL_DIR:-$SAVE_DIR/exchange}  # on a filesystem every job sees
INTERVAL=${INTERVAL:-2500}                  # updates between exchanges (the paper's)
ALPHA=${ALPHA:-1}                           # constant alpha, the paper's ImageNet choice

train_codistill "$@"
