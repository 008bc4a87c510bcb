#!/usr/bin/env bash
# WMT'16 English-German as Ott et al. (2018, "Scaling Neural Machine Translation") and
# fairseq's examples/scaling_nmt prepare it: Google's preprocessed release
# (wmt16_en_de.tar.gz: Moses-tokenized, cleaned, a joint 32K subword-nmt BPE), newstest2013
# as valid, newstest2014 as test, fairseq-preprocess --joined-dictionary with 32768 words.
#
#   WMT16_ARCHIVE=/data/wmt16_en_de.tar.gz bash data-prep/prepare-wmt16-en-de.sh
#   SPM=1 WMT16_ARCHIVE=... bash data-prep/prepare-wmt16-en-de.sh
#
# SPM=1 trains a joint sentencepiece BPE model on the raw (untokenized) text of the same
# release instead, so that eval.sh scores detokenized output with sacrebleu's own
# tokenizer; without it eval.sh reports fairseq's compound-split tokenized BLEU (the metric
# of fairseq's 29.3 on newstest2014).
#
# Outputs: OUT/bin (data-bin, the DATA of the recipes), OUT/tok/{valid,test}.{en,de}
# (tokenized references) or, with SPM=1, OUT/raw/ (raw splits), OUT/spm.model, OUT/spm/.
# Steps whose outputs exist are skipped.
set -euo pipefail

# Google Drive may answer a script with a confirmation page: download the file in a
# browser and pass WMT16_ARCHIVE when the check of the download fails.
URL=${URL:-https://drive.google.com/uc?export=download&id=0B_bZck-ksdkpM25jRUN2X2UxMm8}
WMT16_ARCHIVE=${WMT16_ARCHIVE:-}     # the archive already on disk: no download
SPM=${SPM:-0}
if [[ "$SPM" == 1 ]]; then OUT=${OUT:-data-bin/wmt16.en-de.spm}; else OUT=${OUT:-data-bin/wmt16.en-de}; fi
SRC=${SRC:-en}
TGT=${TGT:-de}
DICT_SIZE=${DICT_SIZE:-32768}        # fairseq's --nwordssrc/--nwordstgt for the 32K BPE
BPE_SIZE=${BPE_SIZE:-32000}          # SPM=1: joint sentencepiece vocabulary
SPM_SENTENCES=${SPM_SENTENCES:-2000000}  # SPM=1: sentences sampled to train it
RAW_TRAIN=${RAW_TRAIN:-train}        # SPM=1: the release's raw training text, RAW_TRAIN.{en,de}
CLEAN_RATIO=${CLEAN_RATIO:-9}        # SPM=1: the cleaning Google applied (clean-corpus-n 1 80)
CLEAN_MAX_WORDS=${CLEAN_MAX_WORDS:-80}
WORKERS=${WORKERS:-8}

# shellcheck source=data-prep/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ORIG=$OUT/orig
MEMBERS=()
for lang in en de; do
    if [[ "$SPM" == 1 ]]; then
        MEMBERS+=("$RAW_TRAIN.$lang" "newstest2013.$lang" "newstest2014.$lang")
    else
        MEMBERS+=("train.tok.clean.bpe.32000.$lang" "newstest2013.tok.bpe.32000.$lang"
                  "newstest2014.tok.bpe.32000.$lang" "newstest2013.tok.$lang" "newstest2014.tok.$lang")
    fi
done

fetch_archive "$ORIG/wmt16_en_de.tar.gz" "$URL" "$WMT16_ARCHIVE" WMT16_ARCHIVE
extract "$ORIG/wmt16_en_de.tar.gz" "$ORIG" "${MEMBERS[@]}"

if [[ "$SPM" == 1 ]]; then
    mkdir -p "$OUT/raw"
    step "$OUT/raw/train.$TGT" text clean "$ORIG/$RAW_TRAIN" "$OUT/raw/train" \
        --langs "$SRC" "$TGT" \
        --ratio "$CLEAN_RATIO" --min-words 1 --max-words "$CLEAN_MAX_WORDS"
    for lang in en de; do
        step "$OUT/raw/valid.$lang" copy "$ORIG/newstest2013.$lang" "$OUT/raw/valid.$lang"
        step "$OUT/raw/test.$lang" copy "$ORIG/newstest2014.$lang" "$OUT/raw/test.$lang"
    done
    spm_binarize "$OUT" "$SRC" "$TGT" "$BPE_SIZE"
else
    mkdir -p "$OUT/tok"
    for lang in en de; do
        step "$OUT/tok/valid.$lang" copy "$ORIG/newstest2013.tok.$lang" "$OUT/tok/valid.$lang"
        step "$OUT/tok/test.$lang" copy "$ORIG/newstest2014.tok.$lang" "$OUT/tok/test.$lang"
    done
    binarize "$OUT" "$SRC" "$TGT" \
        "$ORIG/train.tok.clean.bpe.32000" "$ORIG/newstest2013.tok.bpe.32000" \
        "$ORIG/newstest2014.tok.bpe.32000" \
        --nwordssrc "$DICT_SIZE" --nwordstgt "$DICT_SIZE"
fi
echo "WMT'16 $SRC->$TGT ready: DATA=$OUT/bin"
