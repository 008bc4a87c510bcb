#!/usr/bin/env bash
# A parallel corpus English <-> LANG from the gettext catalogs installed on this machine
# (/usr/share/locale/LANG/LC_MESSAGES/*.mo): real, human-translated software messages, no
# download. Extraction and the seeded split are in gettext_corpus.py; then the joint
# sentencepiece BPE model and fairseq-preprocess of common.sh, as for IWSLT'14 and WMT'16.
# Steps whose outputs exist are skipped.
#
#   bash data-prep/prepare-gettext.sh            # de->en into data-bin/gettext.de-en
#   LANG_PAIR=fr-en bash data-prep/prepare-gettext.sh
#   TRAIN_FRACTION=0.125 bash data-prep/prepare-gettext.sh   # 1/8 of train, same valid/test
set -euo pipefail

# SRC-TGT, one side "en" (the msgid side). Not LANG: that one is the shell's locale.
LANG_PAIR=${LANG_PAIR:-de-en}
# Fraction of the training pairs kept (valid and test stay the same pairs): the paper's
# less-data regime, where a model overfits and codistillation regularises it.
TRAIN_FRACTION=${TRAIN_FRACTION:-1}
if [[ "$TRAIN_FRACTION" == 1 ]]; then
    OUT=${OUT:-data-bin/gettext.${LANG_PAIR}}
else
    OUT=${OUT:-data-bin/gettext.${LANG_PAIR}.frac${TRAIN_FRACTION}}
fi
LOCALE_DIR=${LOCALE_DIR:-/usr/share/locale}
VALID_PAIRS=${VALID_PAIRS:-1000}
TEST_PAIRS=${TEST_PAIRS:-1000}
MIN_PAIRS=${MIN_PAIRS:-10000}    # fewer, and the script fails rather than train on a toy corpus
SEED=${SEED:-1}
VOCAB_SIZE=${VOCAB_SIZE:-8000}   # joint; small enough that the softmax stays cheap on a CPU
WORKERS=${WORKERS:-2}
PYTHON=${PYTHON:-python}

# shellcheck source=data-prep/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SRC=${LANG_PAIR%-*}
TGT=${LANG_PAIR#*-}
if [[ "$SRC" == en ]]; then OTHER=$TGT; else OTHER=$SRC; fi

mkdir -p "$OUT"
# train.$TGT is the split's last file: it exists only once the split is complete.
step "$OUT/raw/train.$TGT" "$PYTHON" "$COMMON_DIR/gettext_corpus.py" \
    --lang "$OTHER" --direction "$SRC-$TGT" \
    --locale-dir "$LOCALE_DIR" \
    --valid "$VALID_PAIRS" --test "$TEST_PAIRS" --min-pairs "$MIN_PAIRS" \
    --train-fraction "$TRAIN_FRACTION" \
    --seed "$SEED" \
    --out "$OUT/raw"
SPM_SENTENCES=0 spm_binarize "$OUT" "$SRC" "$TGT" "$VOCAB_SIZE"
echo "gettext $SRC->$TGT corpus ready: $OUT/bin (raw text in $OUT/raw, sentencepiece model $OUT/spm.model)"
