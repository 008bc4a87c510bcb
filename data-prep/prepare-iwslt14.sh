#!/usr/bin/env bash
# IWSLT'14 German-English (TED talks) as fairseq's examples/translation/prepare-iwslt14.sh
# prepares it, with a joint sentencepiece BPE model instead of Moses + subword-nmt:
#   train  the TED train.tags files, metadata dropped, cleaned (length ratio 1.5, 1-175
#          words), lower-cased; every 23rd pair held out as valid;
#   test   dev2010 + TEDX.dev2012 + tst2010 + tst2011 + tst2012 (6750 pairs in the real data).
# Then fairseq-preprocess --joined-dictionary into OUT/bin, the DATA of the recipes.
#
#   bash data-prep/prepare-iwslt14.sh                          # downloads de-en.tgz
#   IWSLT14_ARCHIVE=/data/de-en.tgz bash data-prep/prepare-iwslt14.sh
#
# Outputs: OUT/raw/{train,valid,test}.{de,en} (the references of eval.sh), OUT/spm.model,
# OUT/spm/ (encoded splits), OUT/bin (data-bin). Steps whose outputs exist are skipped.
set -euo pipefail

URL=${URL:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}
IWSLT14_ARCHIVE=${IWSLT14_ARCHIVE:-}   # the archive already on disk: no download
OUT=${OUT:-data-bin/iwslt14.de-en}
SRC=${SRC:-de}
TGT=${TGT:-en}
BPE_SIZE=${BPE_SIZE:-10000}            # joint vocabulary, fairseq's IWSLT'14 BPE size
LOWERCASE=${LOWERCASE:-1}              # fairseq's setup lower-cases everything
VALID_EVERY=${VALID_EVERY:-23}         # every 23rd training pair is a validation pair
CLEAN_RATIO=${CLEAN_RATIO:-1.5}
CLEAN_MAX_WORDS=${CLEAN_MAX_WORDS:-175}
WORKERS=${WORKERS:-4}

# shellcheck source=data-prep/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LANG_DIR=de-en   # the archive's folder and file names, whatever the direction
TEST_SETS=(IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011
           IWSLT14.TED.tst2012)
CASE=()
if [[ "$LOWERCASE" == 1 ]]; then CASE=(--lowercase); fi

MEMBERS=()
for lang in de en; do
    MEMBERS+=("$LANG_DIR/train.tags.$LANG_DIR.$lang")
    for set in "${TEST_SETS[@]}"; do MEMBERS+=("$LANG_DIR/$set.$LANG_DIR.$lang.xml"); done
done

fetch_archive "$OUT/orig/de-en.tgz" "$URL" "$IWSLT14_ARCHIVE" IWSLT14_ARCHIVE
extract "$OUT/orig/de-en.tgz" "$OUT/orig" "${MEMBERS[@]}"
ORIG=$OUT/orig/$LANG_DIR
mkdir -p "$OUT/tmp" "$OUT/raw"

for lang in de en; do
    step "$OUT/tmp/train.tags.$lang" text ted-tags "${CASE[@]}" \
        "$ORIG/train.tags.$LANG_DIR.$lang" "$OUT/tmp/train.tags.$lang"
done
step "$OUT/tmp/train.clean.$TGT" text clean "$OUT/tmp/train.tags" "$OUT/tmp/train.clean" \
    --langs "$SRC" "$TGT" \
    --ratio "$CLEAN_RATIO" --min-words 1 --max-words "$CLEAN_MAX_WORDS"
step "$OUT/raw/valid.$TGT" text holdout "$OUT/tmp/train.clean" "$OUT/raw/train" "$OUT/raw/valid" \
    --langs "$SRC" "$TGT" \
    --every "$VALID_EVERY"
for lang in de en; do
    xml=()
    for set in "${TEST_SETS[@]}"; do xml+=("$ORIG/$set.$LANG_DIR.$lang.xml"); done
    step "$OUT/raw/test.$lang" text ted-xml "${CASE[@]}" "$OUT/raw/test.$lang" "${xml[@]}"
done

spm_binarize "$OUT" "$SRC" "$TGT" "$BPE_SIZE"
echo "IWSLT'14 $SRC->$TGT ready: DATA=$OUT/bin"
