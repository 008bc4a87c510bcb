#!/usr/bin/env bash
# Codistillation on WMT'16 En-De, the paper's setup: NUM_MODELS=2 "big" Transformers on
# NGPU/2 GPUs each, together the batch of wmt16_en_de_big_allreduce.sh (128 micro-batches
# per update), each the same number of updates, no label smoothing, alpha x1.1 per epoch.
# The paper: about the all-reduce model's validation NLL, at a higher training loss. The
# shared recipe is wmt16_en_de_big_common.sh; model i logs to SAVE_DIR/model{i}/train.log.
#
#   DATA=data-bin/wmt16.en-de/bin SAVE_DIR=checkpoints/wmt16_codistill \
#       bash recipes/wmt16_en_de_big_codistill.sh [fairseq-train args...]
#   SAVE_DIR=checkpoints/wmt16_codistill bash recipes/eval.sh
set -euo pipefail
# shellcheck source=recipes/wmt16_en_de_big_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/wmt16_en_de_big_common.sh"

: "${DATA:?set DATA to the data-bin of data-prep/prepare-wmt16-en-de.sh (its OUT/bin)}"
: "${SAVE_DIR:?set SAVE_DIR to a directory for the models, their logs and the exchange}"
BATCH=${BATCH:-128}              # micro-batches per update of both models together
LR=${LR:-1e-3}
MAX_UPDATE=${MAX_UPDATE:-24000}  # per model, as the all-reduce model
INTERVAL=${INTERVAL:-350}        # updates between exchanges: half an epoch, as the paper's
                                 # 2500 on ImageNet
BEAM=${BEAM:-4}
LENPEN=${LENPEN:-0.6}

train_codistill "$@"
