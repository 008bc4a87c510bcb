# shellcheck shell=bash
# Shell helpers of the NMT data-prep scripts; sourced, not run.
#
# A step names its output and is skipped when that output exists; every step writes its
# output under a temporary name and renames it at the end, so an interrupted run leaves
# no half-written output to skip over. Delete an output to redo its step.

COMMON_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

# step OUTPUT CMD...: run CMD unless OUTPUT exists; a failing CMD stops the script.
step() {
    local output=$1
    shift
    if [[ -e "$output" ]]; then
        echo "skip: $output exists"
        return 0
    fi
    "$@" || die "step for $output failed (exit $?): $*"
}

text() {
    "$PYTHON" "$COMMON_DIR/common_text.py" "$@"
}

copy() {
    cp "$1" "$2.tmp" && mv "$2.tmp" "$2"
}

# fetch_archive DEST URL LOCAL NAME: DEST becomes a gzip archive: the file LOCAL when set
# (NAME is the variable that holds it, for the messages), else a download of URL.
fetch_archive() {
    local dest=$1 url=$2 local_path=$3 name=$4
    mkdir -p "$(dirname "$dest")"
    if [[ -n "$local_path" ]]; then
        [[ -f "$local_path" ]] || die "$name=$local_path: no such file"
        if [[ ! "$dest" -ef "$local_path" ]]; then
            ln -sf "$(cd "$(dirname "$local_path")" && pwd)/$(basename "$local_path")" "$dest"
        fi
    elif [[ ! -s "$dest" ]]; then
        echo "downloading $url"
        if command -v curl > /dev/null; then
            curl -fL --retry 3 -o "$dest.part" "$url" \
                || die "download of $url failed; fetch it by hand and set $name=/path/to/it"
        elif command -v wget > /dev/null; then
            wget -O "$dest.part" "$url" \
                || die "download of $url failed; fetch it by hand and set $name=/path/to/it"
        else
            die "neither curl nor wget is installed; fetch $url by hand and set $name=/path/to/it"
        fi
        mv "$dest.part" "$dest"
    fi
    gzip -t "$dest" 2> /dev/null \
        || die "$dest is not a gzip archive (a failed or interrupted download, or an HTML" \
               "page instead of the file?); delete it and retry, or set $name=/path/to/it"
}

# extract ARCHIVE DIR MEMBER...: the MEMBERs of ARCHIVE (a .tar.gz) into DIR, once.
extract() {
    local archive=$1 dir=$2
    shift 2
    local stamp="$dir/.extracted"
    if [[ -e "$stamp" ]]; then
        echo "skip: $archive already extracted into $dir"
        return 0
    fi
    mkdir -p "$dir"
    echo "extracting $archive"
    if ! tar -xzf "$archive" -C "$dir" "$@"; then
        local member missing=()
        for member in "$@"; do
            if [[ ! -e "$dir/$member" ]]; then missing+=("$member"); fi
        done
        die "extracting $archive failed; missing from it: ${missing[*]:-none} (is it the right archive?)"
    fi
    touch "$stamp"
}

# spm_binarize OUT SRC TGT VOCAB_SIZE [fairseq-preprocess args...]: a joint sentencepiece
# BPE model on OUT/raw/train.{SRC,TGT} (SPM_SENTENCES of them sampled), the raw splits
# encoded into OUT/spm/, and fairseq-preprocess --joined-dictionary of those into OUT/bin.
spm_binarize() {
    local out=$1 src=$2 tgt=$3 vocab=$4
    shift 4
    step "$out/spm.model" text spm-train \
        --model-prefix "$out/spm" --vocab-size "$vocab" --threads "$WORKERS" \
        --input-sentence-size "${SPM_SENTENCES:-2000000}" \
        "$out/raw/train.$src" "$out/raw/train.$tgt"
    mkdir -p "$out/spm"
    local split lang
    for split in train valid test; do
        for lang in "$src" "$tgt"; do
            step "$out/spm/$split.$lang" text spm-encode --model "$out/spm.model" \
                "$out/raw/$split.$lang" "$out/spm/$split.$lang"
        done
    done
    binarize "$out" "$src" "$tgt" "$out/spm/train" "$out/spm/valid" "$out/spm/test" "$@"
}

# binarize OUT SRC TGT TRAINPREF VALIDPREF TESTPREF [fairseq-preprocess args...]
binarize() {
    local out=$1 src=$2 tgt=$3 train=$4 valid=$5 test=$6
    shift 6
    step "$out/bin" run_preprocess "$out" \
        --source-lang "$src" --target-lang "$tgt" \
        --trainpref "$train" --validpref "$valid" --testpref "$test" \
        --joined-dictionary \
        --workers "$WORKERS" \
        "$@"
}

run_preprocess() {
    local out=$1
    shift
    rm -rf "$out/bin.tmp"
    echo "fairseq-preprocess into $out/bin (log: $out/preprocess.log)"
    if ! fairseq-preprocess --destdir "$out/bin.tmp" "$@" > "$out/preprocess.log" 2>&1; then
        tail -n 20 "$out/preprocess.log" >&2
        return 1
    fi
    mv "$out/bin.tmp" "$out/bin"
}
