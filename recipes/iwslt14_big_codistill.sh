#!/usr/bin/env bash
# Codistillation on IWSLT'14 De-En, the paper's setup: NUM_MODELS=2 "big" Transformers on
# NGPU/2 GPUs each, each with half the batch of iwslt14_big_allreduce.sh and the same
# number of updates, no label smoothing, alpha x1.1 per epoch. The recipe both share is
# wmt16_en_de_big_common.sh; the models' logs are SAVE_DIR/model{i}/train.log.
#
#   DATA=data-bin/iwslt14.de-en/bin SAVE_DIR=checkpoints/iwslt14_codistill \
#       bash recipes/iwslt14_big_codistill.sh [fairseq-train args...]
#   SAVE_DIR=checkpoints/iwslt14_codistill bash recipes/eval.sh
#
# The paper: validation NLL 2.31 codistilled against 2.37 all-reduce. TINY=1 trains two
# 2-layer models for 40 updates on the CPU.
set -euo pipefail
# shellcheck source=recipes/wmt16_en_de_big_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/wmt16_en_de_big_common.sh"

: "${DATA:?set DATA to the data-bin of data-prep/prepare-iwslt14.sh (its OUT/bin)}"
: "${SAVE_DIR:?set SAVE_DIR to a directory for the models, their logs and the exchange}"
BATCH=${BATCH:-4}                # micro-batches per update of both models together
LR=${LR:-5e-4}
MAX_UPDATE=${MAX_UPDATE:-20000}  # per model, as the all-reduce model
INTERVAL=${INTERVAL:-300}        # updates between exchanges: half an epoch, as the paper's
                                 # 2500 on ImageNet; the study (docs/study-earlier.md)
                                 # gained from half an epoch to four
BEAM=${BEAM:-5}
LENPEN=${LENPEN:-1.0}

train_codistill "$@"
