#!/usr/bin/env bash
# The paper's all-reduce baseline on IWSLT'14 De-En: one "big" Transformer (Ott et al. 2018)
# trained data-parallel on NGPU GPUs with label smoothing 0.1. Its codistilled counterpart
# is iwslt14_big_codistill.sh; the recipe both share is wmt16_en_de_big_common.sh.
#
#   DATA=data-bin/iwslt14.de-en/bin SAVE_DIR=checkpoints/iwslt14_allreduce \
#       bash recipes/iwslt14_big_allreduce.sh [fairseq-train args...]
#   SAVE_DIR=checkpoints/iwslt14_allreduce bash recipes/eval.sh
#
# NGPU=16 BATCH=16 and the like change the hardware and the batch; TINY=1 trains a 2-layer
# model for 40 updates on the CPU.
set -euo pipefail
# shellcheck source=recipes/wmt16_en_de_big_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/wmt16_en_de_big_common.sh"

: "${DATA:?set DATA to the data-bin of data-prep/prepare-iwslt14.sh (its OUT/bin)}"
: "${SAVE_DIR:?set SAVE_DIR to a directory for the checkpoints and train.log}"
BATCH=${BATCH:-4}                # micro-batches per update, 14K tokens (ours: the paper gives none)
LR=${LR:-5e-4}                   # Ott et al.'s for batches of this size
MAX_UPDATE=${MAX_UPDATE:-20000}  # about 65 epochs (ours)
BEAM=${BEAM:-5}                  # fairseq's IWSLT'14 decoding
LENPEN=${LENPEN:-1.0}

train_allreduce "$@"
