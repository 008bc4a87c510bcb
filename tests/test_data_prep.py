"""data-prep/: the IWSLT'14 and WMT'16 preparations, run offline on small archives in the
real layouts (tests/fixtures/nmt_archives.py)."""
import os
import tarfile

import pytest
import sentencepiece as spm
from fairseq.data.indexed_dataset import MMapIndexedDataset

from conftest import REPO, run
from fixtures.nmt_archives import (IWSLT_TEST_SETS, iwslt_test_segments, iwslt_train,
                                   make_iwslt14_archive, make_wmt16_archive, prep_env,
                                   prepare_iwslt14, toy_bpe, toy_tokenize, wmt16_splits)

pytestmark = pytest.mark.e2e
WMT16 = REPO / "data-prep" / "prepare-wmt16-en-de.sh"
IWSLT14 = REPO / "data-prep" / "prepare-iwslt14.sh"


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def num_sentences(bin_dir, split, pair, lang):
    return len(MMapIndexedDataset(str(bin_dir / f"{split}.{pair}.{lang}")))


# -- IWSLT'14 ------------------------------------------------------------------------------
def test_iwslt14_splits_follow_fairseq(tmp_path_factory):
    out = prepare_iwslt14(tmp_path_factory)
    _, kept = iwslt_train()
    kept = [(de.lower(), en.lower()) for de, en in kept]
    # the pairs a TED talk's tags hold, in order: titles and descriptions kept without
    # their tags, metadata lines and the three bad pairs (ratio, length, empty) dropped
    valid = [p for i, p in enumerate(kept, 1) if i % 23 == 0]
    train = [p for i, p in enumerate(kept, 1) if i % 23 != 0]
    assert len(kept) == 5 * (2 + 90) and len(valid) == 20
    for split, pairs in (("train", train), ("valid", valid)):
        assert lines(out / "raw" / f"{split}.de") == [de for de, _ in pairs]
        assert lines(out / "raw" / f"{split}.en") == [en for _, en in pairs]
    assert not any("<" in line for line in lines(out / "raw" / "train.en"))

    # test: the <seg> contents of dev2010, TEDX.dev2012, tst2010, tst2011, tst2012 in order,
    # "&amp;" decoded and the typographic apostrophe made plain
    segments = iwslt_test_segments()
    expected_en = [en.lower() for s in IWSLT_TEST_SETS for _, en in segments[s]]
    test_en = lines(out / "raw" / "test.en")
    assert test_en == [e.replace("&amp;", "&").replace("\u2019", "'") for e in expected_en]
    assert test_en[0] == "the house & the cat's garden."
    assert len(test_en) == 5 * 8


def test_iwslt14_joint_sentencepiece_and_data_bin(tmp_path_factory):
    out = prepare_iwslt14(tmp_path_factory)
    model = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert model.get_piece_size() == 200  # BPE_SIZE of prepare_iwslt14
    for split in ("train", "test"):
        pieces = lines(out / "spm" / f"{split}.de")
        assert [model.decode(p.split()) for p in pieces] == lines(out / "raw" / f"{split}.de")
    bin_dir = out / "bin"
    assert (bin_dir / "dict.de.txt").read_text() == (bin_dir / "dict.en.txt").read_text()
    for split, n in (("train", 440), ("valid", 20), ("test", 40)):
        for lang in ("de", "en"):
            assert num_sentences(bin_dir, split, "de-en", lang) == n


def test_iwslt14_second_run_skips_every_step(tmp_path_factory):
    out = prepare_iwslt14(tmp_path_factory)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = run(["bash", IWSLT14], env=prep_env(OUT=out, IWSLT14_ARCHIVE=out.parent / "archive" / "de-en.tgz"))
    assert "fairseq-preprocess" not in proc.stdout and "extracting" not in proc.stdout
    assert proc.stdout.count("skip:") == 15  # extract, 2 tags, clean, holdout, 2 test, spm, 6 encode, bin
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_iwslt14_download_failure_is_loud(tmp_path):
    proc = run(["bash", IWSLT14], check=False,
               env=prep_env(OUT=tmp_path / "out", URL=f"file://{tmp_path}/missing/de-en.tgz"))
    assert proc.returncode != 0
    assert "download of file://" in proc.stderr and "IWSLT14_ARCHIVE" in proc.stderr
    assert not (tmp_path / "out" / "orig" / "de-en.tgz").exists()


def test_iwslt14_bad_archives_are_loud(tmp_path):
    proc = run(["bash", IWSLT14], check=False,
               env=prep_env(OUT=tmp_path / "a", IWSLT14_ARCHIVE=tmp_path / "nowhere.tgz"))
    assert proc.returncode != 0 and "nowhere.tgz: no such file" in proc.stderr

    html = tmp_path / "page.tgz"
    html.write_text("<html>Google Drive can't scan this file for viruses</html>")
    proc = run(["bash", IWSLT14], check=False, env=prep_env(OUT=tmp_path / "b", IWSLT14_ARCHIVE=html))
    assert proc.returncode != 0 and "is not a gzip archive" in proc.stderr

    incomplete = tmp_path / "incomplete.tgz"
    with tarfile.open(make_iwslt14_archive(tmp_path / "full")) as src, \
            tarfile.open(incomplete, "w:gz") as dst:
        for member in src.getmembers():
            if "tst2012" not in member.name:
                dst.addfile(member, src.extractfile(member))
    proc = run(["bash", IWSLT14], check=False,
               env=prep_env(OUT=tmp_path / "c", IWSLT14_ARCHIVE=incomplete))
    assert proc.returncode != 0 and "IWSLT14.TED.tst2012.de-en.de.xml" in proc.stderr


# -- WMT'16 --------------------------------------------------------------------------------
def test_wmt16_google_bpe(tmp_path):
    archive = make_wmt16_archive(tmp_path / "archive")
    out = tmp_path / "out"
    run(["bash", WMT16], env=prep_env(OUT=out, WMT16_ARCHIVE=archive))
    splits = wmt16_splits()
    dictionary = (out / "bin" / "dict.en.txt").read_text()
    assert dictionary == (out / "bin" / "dict.de.txt").read_text()  # --joined-dictionary
    words = {line.split()[0] for line in dictionary.splitlines()}
    # the release's subword-nmt units, e.g. "hou@@ se", are the vocabulary
    assert {"hou@@", "se", "gar@@", "den"} <= words and "house" not in words
    for split, name in (("train", "train"), ("valid", "newstest2013"), ("test", "newstest2014")):
        for lang in ("en", "de"):
            assert num_sentences(out / "bin", split, "en-de", lang) == len(splits[name])
    # references for eval.sh: the tokenized newstest2014, not its BPE
    test_de = [de for _, de in splits["newstest2014"]]
    assert lines(out / "tok" / "test.de") == [toy_tokenize(d) for d in test_de]
    assert toy_bpe(toy_tokenize(test_de[0])) != toy_tokenize(test_de[0])
    assert not (out / "spm.model").exists()


def test_wmt16_sentencepiece_on_raw_text(tmp_path):
    archive = make_wmt16_archive(tmp_path / "archive")
    out = tmp_path / "out"
    run(["bash", WMT16], env=prep_env(OUT=out, WMT16_ARCHIVE=archive, SPM=1, BPE_SIZE=150))
    splits = wmt16_splits()
    assert lines(out / "raw" / "test.de") == [de for _, de in splits["newstest2014"]]
    assert lines(out / "raw" / "valid.en") == [en for en, _ in splits["newstest2013"]]
    model = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert model.get_piece_size() == 150
    assert model.decode(lines(out / "spm" / "test.de")[0].split()) == "Das groß-haus ist rot."
    assert num_sentences(out / "bin", "train", "en-de", "de") == 400
    assert (out / "bin" / "dict.en.txt").read_text() == (out / "bin" / "dict.de.txt").read_text()


def test_wmt16_missing_member_is_named(tmp_path):
    archive = tmp_path / "wmt16_en_de.tar.gz"
    with tarfile.open(make_wmt16_archive(tmp_path / "full")) as src, \
            tarfile.open(archive, "w:gz") as dst:
        for member in src.getmembers():
            if member.name != "newstest2014.tok.bpe.32000.de":
                dst.addfile(member, src.extractfile(member))
    proc = run(["bash", WMT16], check=False, env=prep_env(OUT=tmp_path / "out", WMT16_ARCHIVE=archive))
    assert proc.returncode != 0
    assert "newstest2014.tok.bpe.32000.de" in proc.stderr
    assert not (tmp_path / "out" / "bin").exists()
    assert os.path.exists(tmp_path / "out" / "orig" / "wmt16_en_de.tar.gz")
