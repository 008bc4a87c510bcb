#!/usr/bin/env bash
# Ott et al. (2018) on WMT'16 En-De, the paper's all-reduce baseline: one "big" Transformer,
# data-parallel on NGPU GPUs with update-freq 128/NGPU (their 128-GPU batch), lr 1e-3,
# label smoothing 0.1, fp16. fairseq reports 29.3 BLEU (compound-split) on newstest2014.
# Its codistilled counterpart is wmt16_en_de_big_codistill.sh; the shared recipe is
# wmt16_en_de_big_common.sh.
#
#   DATA=data-bin/wmt16.en-de/bin SAVE_DIR=checkpoints/wmt16_allreduce \
#       bash recipes/wmt16_en_de_big_allreduce.sh [fairseq-train args...]
#   SAVE_DIR=checkpoints/wmt16_allreduce bash recipes/eval.sh
set -euo pipefail
# shellcheck source=recipes/wmt16_en_de_big_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/wmt16_en_de_big_common.sh"

: "${DATA:?set DATA to the data-bin of data-prep/prepare-wmt16-en-de.sh (its OUT/bin)}"
: "${SAVE_DIR:?set SAVE_DIR to a directory for the checkpoints and train.log}"
BATCH=${BATCH:-128}              # micro-batches per update: Ott et al.'s 128 GPUs
LR=${LR:-1e-3}                   # Ott et al.'s for this batch
MAX_UPDATE=${MAX_UPDATE:-24000}  # about 70 epochs, fairseq's run (fairseq issue #1976)
BEAM=${BEAM:-4}                  # Ott et al.'s decoding
LENPEN=${LENPEN:-0.6}

train_allreduce "$@"
