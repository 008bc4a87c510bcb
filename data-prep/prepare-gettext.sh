#!/usr/bin/env bash
# A parallel corpus English <-> LANG from the gettext catalogs installed on this machine
# (/usr/share/locale/LANG/LC_MESSAGES/*.mo): real, human-translated software messages, no
# download. Extraction and the seeded split are in gettext_corpus.py; then a joint
# sentencepiece model and fairseq-preprocess. Steps whose outputs exist are skipped.
#
#   bash data-prep/prepare-gettext.sh            # de->en into data-bin/gettext.de-en
#   LANG_PAIR=fr-en bash data-prep/prepare-gettext.sh
set -euo pipefail

# SRC-TGT, one side "en" (the msgid side). Not LANG: that one is the shell's locale.
LANG_PAIR=${LANG_PAIR:-de-en}
OUT=${OUT:-data-bin/gettext.${LANG_PAIR}}
LOCALE_DIR=${LOCALE_DIR:-/usr/share/locale}
VALID_PAIRS=${VALID_PAIRS:-1000}
TEST_PAIRS=${TEST_PAIRS:-1000}
MIN_PAIRS=${MIN_PAIRS:-10000}    # fewer, and the script fails rather than train on a toy corpus
SEED=${SEED:-1}
VOCAB_SIZE=${VOCAB_SIZE:-8000}   # joint; small enough that the softmax stays cheap on a CPU
WORKERS=${WORKERS:-2}

SRC=${LANG_PAIR%-*}
TGT=${LANG_PAIR#*-}
if [[ "$SRC" == en ]]; then OTHER=$TGT; else OTHER=$SRC; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}

mkdir -p "$OUT"

if [[ ! -s "$OUT/raw/test.$TGT" ]]; then
    "$PYTHON" "$HERE/gettext_corpus.py" \
        --lang "$OTHER" --direction "$SRC-$TGT" \
        --locale-dir "$LOCALE_DIR" \
        --valid "$VALID_PAIRS" --test "$TEST_PAIRS" --min-pairs "$MIN_PAIRS" \
        --seed "$SEED" \
        --out "$OUT/raw"
fi

if [[ ! -s "$OUT/spm.model" ]]; then
    echo "sentencepiece: joint $VOCAB_SIZE-piece model on train.$SRC + train.$TGT"
    "$PYTHON" "$HERE/spm.py" train \
        --model-prefix "$OUT/spm" --vocab-size "$VOCAB_SIZE" --seed "$SEED" \
        "$OUT/raw/train.$SRC" "$OUT/raw/train.$TGT"
fi

mkdir -p "$OUT/spm"
for split in train valid test; do
    for lang in "$SRC" "$TGT"; do
        if [[ ! -s "$OUT/spm/$split.$lang" ]]; then
            "$PYTHON" "$HERE/spm.py" encode --model "$OUT/spm.model" \
                < "$OUT/raw/$split.$lang" > "$OUT/spm/$split.$lang.tmp"
            mv "$OUT/spm/$split.$lang.tmp" "$OUT/spm/$split.$lang"
        fi
    done
done

if [[ ! -s "$OUT/bin/test.$SRC-$TGT.$TGT.bin" ]]; then
    echo "fairseq-preprocess: $SRC->$TGT, joined dictionary, into $OUT/bin"
    fairseq-preprocess \
        --source-lang "$SRC" --target-lang "$TGT" \
        --trainpref "$OUT/spm/train" --validpref "$OUT/spm/valid" --testpref "$OUT/spm/test" \
        --destdir "$OUT/bin" \
        --joined-dictionary \
        --workers "$WORKERS" \
        > "$OUT/preprocess.log" 2>&1 \
        || { tail -n 20 "$OUT/preprocess.log" >&2; exit 1; }
fi
echo "gettext $SRC->$TGT corpus ready: $OUT/bin (raw text in $OUT/raw, sentencepiece model $OUT/spm.model)"
