"""data-prep/gettext_corpus.py and prepare-gettext.sh on tiny catalogs made here."""
import importlib.util
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO

spec = importlib.util.spec_from_file_location("gettext_corpus", REPO / "data-prep" / "gettext_corpus.py")
gettext_corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gettext_corpus)

HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'

APP_PO = HEADER + r'''
msgid "Open file"
msgstr "Datei öffnen"

msgctxt "menu"
msgid "Quit"
msgstr "Beenden"

msgid "%d file was removed"
msgid_plural "%d files were removed"
msgstr[0] "%d Datei wurde entfernt"
msgstr[1] "%d Dateien wurden entfernt"

msgid "Usage: app [OPTION]\n  -h  show help"
msgstr "Aufruf: app [OPTION]\n  -h  Hilfe anzeigen"

msgid "%s: %s"
msgstr "%s: %s"

msgid "{name}"
msgstr "»{name}«"

msgid "OK"
msgstr "OK"

msgid "Not translated yet"
msgstr ""

#, fuzzy
msgid "Guessed"
msgstr "Geraten"

msgid "Save   the  file "
msgstr "Die Datei   speichern"
'''

# Same German string for another English one: the first catalog (sorted by name) wins.
OTHER_PO = HEADER + r'''
msgid "Leave"
msgstr "Beenden"

msgid "Print"
msgstr "Drucken"
'''


def msgfmt(po: str, mo: Path) -> None:
    if shutil.which("msgfmt") is None:
        pytest.skip("gettext's msgfmt is not installed")
    po_path = mo.with_suffix(".po")
    po_path.write_text(po, encoding="utf-8")
    subprocess.run(["msgfmt", "-o", str(mo), str(po_path)], check=True, timeout=30)


@pytest.fixture
def catalogs(tmp_path) -> Path:
    messages = tmp_path / "locale" / "de" / "LC_MESSAGES"
    messages.mkdir(parents=True)
    msgfmt(APP_PO, messages / "app.mo")
    msgfmt(OTHER_PO, messages / "other.mo")
    return tmp_path / "locale"


def test_read_mo_strips_context_and_plurals(catalogs):
    entries = dict(gettext_corpus.read_mo(catalogs / "de" / "LC_MESSAGES" / "app.mo"))
    assert entries["Quit"] == "Beenden"  # "menu\x04Quit" without its context
    assert entries["%d file was removed"] == "%d Datei wurde entfernt"  # singular forms
    assert "Guessed" not in entries and "Not translated yet" not in entries  # msgfmt drops them
    assert "" not in entries  # the header


def test_collect_filters_and_dedups_de_en(catalogs):
    files = sorted((catalogs / "de" / "LC_MESSAGES").glob("*.mo"))
    pairs, stats = gettext_corpus.collect(files, src_is_english=False, max_chars=200)
    assert sorted(pairs) == [
        ("%d Datei wurde entfernt", "%d file was removed"),
        ("Beenden", "Quit"),              # app.mo comes before other.mo: "Leave" is a duplicate
        ("Datei öffnen", "Open file"),
        ("Die Datei speichern", "Save the file"),  # whitespace collapsed
        ("Drucken", "Print"),
    ]
    assert stats["multi-line"] == 1
    assert stats["placeholders only"] == 2  # "%s: %s" and "{name}"
    assert stats["untranslated"] == 1       # "OK"
    assert stats["duplicate source"] == 1


def test_collect_en_de_keeps_both_english_strings(catalogs):
    files = sorted((catalogs / "de" / "LC_MESSAGES").glob("*.mo"))
    pairs, stats = gettext_corpus.collect(files, src_is_english=True, max_chars=200)
    sources = [s for s, _ in pairs]
    assert "Quit" in sources and "Leave" in sources  # distinct sources, same target
    assert stats["duplicate source"] == 0


def test_max_chars_drops_long_strings(catalogs):
    files = sorted((catalogs / "de" / "LC_MESSAGES").glob("*.mo"))
    pairs, stats = gettext_corpus.collect(files, src_is_english=False, max_chars=12)
    # "Datei öffnen" is 12 characters: kept; "Die Datei speichern" (19) is not
    assert ("Datei öffnen", "Open file") in pairs
    assert all(len(s) <= 12 and len(t) <= 12 for s, t in pairs)
    assert stats["too long"] == 2


def write_mo(path: Path, entries, order: str = "<") -> None:
    """A .mo written by hand (Python ships no writer): header, then the two tables of
    (length, offset) and the strings, sorted by msgid as msgfmt does."""
    entries = sorted(entries)
    n = len(entries)
    originals, translations = 28, 28 + 8 * n
    offset = translations + 8 * n
    table_o, table_t, blob = b"", b"", b""
    for key, value in entries:
        table_o += struct.pack(order + "2I", len(key), offset + len(blob))
        blob += key + b"\0"
    for key, value in entries:
        table_t += struct.pack(order + "2I", len(value), offset + len(blob))
        blob += value + b"\0"
    header = struct.pack(order + "7I", 0x950412DE, 0, n, originals, translations, 0, 0)
    path.write_bytes(header + table_o + table_t + blob)


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_skips_only_the_undecodable_entry(tmp_path, order):
    mo = tmp_path / "mixed.mo"
    write_mo(mo, [
        (b"", b"Content-Type: text/plain; charset=UTF-8\n"),
        (b"Close", "Schließen".encode("utf-8")),
        (b"Size", "Größe".encode("latin-1")),  # declared UTF-8, is Latin-1
    ], order)
    assert list(gettext_corpus.read_mo(mo)) == [("Close", "Schließen")]


def test_split_is_seeded_disjoint_and_sized():
    pairs = [(f"s{i}", f"t{i}") for i in range(50)]
    a = gettext_corpus.split(pairs, valid=5, test=7, seed=3)
    b = gettext_corpus.split(list(reversed(pairs)), valid=5, test=7, seed=3)
    assert a == b  # the input order does not matter, the seed does
    assert [len(a[k]) for k in ("valid", "test", "train")] == [5, 7, 38]
    assert sorted(a["valid"] + a["test"] + a["train"]) == sorted(pairs)
    assert a != gettext_corpus.split(pairs, valid=5, test=7, seed=4)


def test_train_fraction_keeps_valid_and_test():
    pairs = [(f"s{i}", f"t{i}") for i in range(50)]
    full = gettext_corpus.split(pairs, valid=5, test=7, seed=3)
    quarter = gettext_corpus.split(pairs, valid=5, test=7, seed=3, train_fraction=0.25)
    assert quarter["valid"] == full["valid"] and quarter["test"] == full["test"]
    assert quarter["train"] == full["train"][:10]  # round(38 / 4) = 10: a prefix, so nested


def test_main_writes_aligned_files(catalogs, tmp_path):
    out = tmp_path / "raw"
    code = gettext_corpus.main(["--lang", "de", "--locale-dir", str(catalogs), "--out", str(out),
                                "--valid", "1", "--test", "1", "--min-pairs", "5"])
    assert code == 0
    lines = {name: (out / name).read_text(encoding="utf-8").splitlines()
             for name in ("train.de", "train.en", "valid.de", "valid.en", "test.de", "test.en")}
    assert [len(lines[f"{s}.de"]) for s in ("train", "valid", "test")] == [3, 1, 1]
    for split in ("train", "valid", "test"):
        for de, en in zip(lines[f"{split}.de"], lines[f"{split}.en"]):
            assert (de, en) in {("Beenden", "Quit"), ("Datei öffnen", "Open file"),
                                ("Drucken", "Print"), ("Die Datei speichern", "Save the file"),
                                ("%d Datei wurde entfernt", "%d file was removed")}


def test_too_few_pairs_fails_loudly(catalogs, tmp_path, capsys):
    out = tmp_path / "raw"
    code = gettext_corpus.main(["--locale-dir", str(catalogs), "--out", str(out), "--valid", "1",
                                "--test", "1"])  # the default --min-pairs is 10000
    assert code == 1
    assert "only 5 usable de-en pairs from 2 gettext catalogs" in capsys.readouterr().err
    assert not out.exists()


def test_prepare_script_fails_without_catalogs(tmp_path):
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LOCALE_DIR": str(tmp_path / "none"),
           "OUT": str(tmp_path / "data")}
    proc = subprocess.run(["bash", str(REPO / "data-prep" / "prepare-gettext.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "only 0 usable de-en pairs from 0 gettext catalogs" in proc.stderr
    assert not (tmp_path / "data" / "bin").exists()


def made_up_catalog(locale: Path, lang: str = "xx", n: int = 300) -> Path:
    """n distinct pairs of a made-up language: the English upper-cased, "the" -> "de"."""
    messages = locale / lang / "LC_MESSAGES"
    messages.mkdir(parents=True)
    verbs = ["open", "save", "close", "print", "delete", "copy"]
    objects = ["file", "folder", "window", "page", "image", "link"]
    entries = [(b"", b"Content-Type: text/plain; charset=UTF-8\n")]
    for i in range(n):
        en = f"{verbs[i % 6]} the {objects[i // 6 % 6]} number {i}"
        entries.append((en.encode(), en.upper().replace("THE", "de").encode()))
    write_mo(messages / "made-up.mo", entries)
    return locale


@pytest.mark.e2e
def test_prepare_script_builds_a_data_bin(tmp_path):
    """sentencepiece + fairseq-preprocess on 300 made-up pairs; a second run skips it all."""
    made_up_catalog(tmp_path / "locale")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LOCALE_DIR": str(tmp_path / "locale"),
           "OUT": str(tmp_path / "data"), "LANG_PAIR": "xx-en", "VALID_PAIRS": "20",
           "TEST_PAIRS": "20", "MIN_PAIRS": "100", "VOCAB_SIZE": "60", "WORKERS": "1"}
    script = ["bash", str(REPO / "data-prep" / "prepare-gettext.sh")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    data = tmp_path / "data"
    for split, n in (("train", 260), ("valid", 20), ("test", 20)):
        assert len((data / "raw" / f"{split}.xx").read_text().splitlines()) == n
        assert (data / "bin" / f"{split}.xx-en.xx.bin").stat().st_size > 0
    assert (data / "spm.model").stat().st_size > 0
    assert (data / "bin" / "dict.xx.txt").read_text() == (data / "bin" / "dict.en.txt").read_text()
    second = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0
    assert "sentencepiece:" not in second.stdout and "fairseq-preprocess:" not in second.stdout
    assert "corpus ready" in second.stdout
