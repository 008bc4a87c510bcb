#!/usr/bin/env bash
# Evaluate a run of the NMT recipes: average each model's last AVG epoch checkpoints
# (fairseq-codistill-average), translate SPLIT with the recipe's beam and length penalty,
# score the detokenized output with sacrebleu, and measure the validation NLL (base 2, as
# fairseq logs it) of the references; both through fairseq_codistill.tools.evaluate.
#
#   SAVE_DIR=checkpoints/iwslt14_codistill bash recipes/eval.sh
#
# Writes eval.json next to each model's train.log: SAVE_DIR/eval.json for an all-reduce
# run; SAVE_DIR/model{i}/eval.json and, for the ensemble of the codistilled models
# (fairseq-generate --path a.pt:b.pt), SAVE_DIR/ensemble/eval.json for a codistilled one.
#
# Detokenization and references follow the data-prep output that DATA is the bin/ of:
# with a sentencepiece model (OUT/spm.model) the pieces are decoded and scored against
# OUT/raw/SPLIT.TGT; otherwise (WMT'16, Google's BPE) the BPE is removed and the output is
# scored against the tokenized OUT/tok/SPLIT.TGT, and fairseq's compound-split tokenized
# BLEU (the metric of its 29.3 on newstest2014) is printed too.
set -euo pipefail

: "${SAVE_DIR:?set SAVE_DIR to the SAVE_DIR of a recipe run}"
# The recipe wrote DATA, BEAM, LENPEN and AVG to SAVE_DIR/eval.env; set one here to override it.
if [[ -f "$SAVE_DIR/eval.env" ]]; then
    while IFS='=' read -r key value; do
        case "$key" in
            DATA | BEAM | LENPEN | AVG) if [[ -z "${!key:-}" ]]; then printf -v "$key" '%s' "$value"; fi ;;
        esac
    done < "$SAVE_DIR/eval.env"
fi
: "${DATA:?set DATA to the data-bin the run trained on (SAVE_DIR has no eval.env)}"
BEAM=${BEAM:-5}
LENPEN=${LENPEN:-1.0}
AVG=${AVG:-10}                       # last epoch checkpoints averaged, per model
SPLIT=${SPLIT:-test}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-8000}
PREP=$(dirname "$DATA")              # the data-prep OUT directory
if [[ -f "$PREP/spm.model" ]]; then
    POST_PROCESS=${POST_PROCESS:-sentencepiece}
    REF_DIR=$PREP/raw
else
    POST_PROCESS=${POST_PROCESS:-subword_nmt}
    REF_DIR=$PREP/tok
fi
PYTHON=${PYTHON:-python3}
PLUGIN=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/fairseq_codistill

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

# The target language, from the data-bin's file names (SPLIT.SRC-TGT.LANG.idx).
indexes=("$DATA/$SPLIT".*-*.idx)
[[ -e "${indexes[0]}" ]] || die "DATA=$DATA has no $SPLIT split (no $SPLIT.*-*.idx)"
pair=${indexes[0]##*/}
pair=${pair#"$SPLIT".}
pair=${pair%%.*}
REF=${REF:-$REF_DIR/$SPLIT.${pair#*-}}
[[ -f "$REF" ]] || die "no reference text $REF: set REF to the $SPLIT references, one a line"

# generate OUT PATHS ARGS...: fairseq-generate of the model(s) PATHS into OUT.
generate() {
    local out=$1 paths=$2
    shift 2
    if ! fairseq-generate "$DATA" --user-dir "$PLUGIN" --path "$paths" \
            --max-tokens "$GEN_MAX_TOKENS" \
            "$@" > "$out.tmp" 2> "$out.log"; then
        tail -n 20 "$out.log" >&2
        die "fairseq-generate failed for $paths (log: $out.log)"
    fi
    mv "$out.tmp" "$out"
}

# compound_split_bleu GEN: fairseq's scripts/compound_split_bleu.sh, with sacrebleu.
compound_split_bleu() {
    local gen=$1
    grep '^D-' "$gen" | sort -t- -k2,2n | cut -f3 | split_compounds > "$gen.hyp.split"
    split_compounds < "$REF" > "$gen.ref.split"
    sacrebleu "$gen.ref.split" -i "$gen.hyp.split" --tokenize none --score-only
}

split_compounds() {
    sed -E 's/(\S)-(\S)/\1 ##AT##-##AT## \2/g'
}

# score DIR PATHS: DIR/eval.json for the model, or the ensemble, PATHS (a:b:...).
score() {
    local dir=$1 paths=$2
    echo "== $dir: $paths"
    generate "$dir/valid.score.out" "$paths" --gen-subset valid --score-reference
    generate "$dir/$SPLIT.gen.out" "$paths" \
        --gen-subset "$SPLIT" \
        --beam "$BEAM" --lenpen "$LENPEN" \
        --post-process "$POST_PROCESS"
    "$PYTHON" -m fairseq_codistill.tools.evaluate \
        --generate "$dir/$SPLIT.gen.out" --reference "$REF" --split "$SPLIT" \
        --score-reference "$dir/valid.score.out" \
        --checkpoint "$paths" \
        --out "$dir/eval.json"
    if [[ "$POST_PROCESS" == subword_nmt ]]; then
        echo "compound-split tokenized BLEU: $(compound_split_bleu "$dir/$SPLIT.gen.out")"
    fi
}

# average DIR: DIR/checkpoint.avgAVG.pt, the mean of DIR's last AVG epoch checkpoints.
average() {
    fairseq-codistill-average --inputs "$1" --num-epoch-checkpoints "$AVG" \
        --output "$1/checkpoint.avg$AVG.pt"
}

if [[ -d "$SAVE_DIR/model0" ]]; then
    ensemble=()
    for dir in "$SAVE_DIR"/model[0-9]*; do
        average "$dir"
        score "$dir" "$dir/checkpoint.avg$AVG.pt"
        ensemble+=("$dir/checkpoint.avg$AVG.pt")
    done
    mkdir -p "$SAVE_DIR/ensemble"
    score "$SAVE_DIR/ensemble" "$(IFS=:; echo "${ensemble[*]}")"
else
    average "$SAVE_DIR"
    score "$SAVE_DIR" "$SAVE_DIR/checkpoint.avg$AVG.pt"
fi
