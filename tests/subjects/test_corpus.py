from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pandas as pd
import pytest

from autointerp.corpus import CorpusError, default_corpus_path, iter_documents, iter_rows, resolve_corpus


def test_text_jsonl_and_parquet_corpora(tmp_path):
    (tmp_path / "c.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c"])))
    pd.DataFrame({"body": ["x y", "", "z"]}).to_parquet(tmp_path / "c.parquet")
    assert list(iter_documents(tmp_path / "c.txt")) == ["first doc", "second doc"]
    assert list(iter_documents(tmp_path / "c.jsonl")) == ["a b", "c"]
    assert list(iter_documents(tmp_path / "c.parquet", "body")) == ["x y", "z"]


def test_bad_corpora_say_what_is_wrong(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        resolve_corpus(str(tmp_path / "missing.txt"))
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(iter_documents(tmp_path / "c.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CorpusError, match="bad.jsonl:2"):
        list(iter_documents(tmp_path / "bad.jsonl"))


def test_rows_are_full_and_documents_separated():
    docs = iter(["a b c", "d e", "f g h i", "j"])  # "j" + separator: a tail shorter than a row, dropped
    encode = lambda group: [[ord(w) for w in d.split()] for d in group]  # noqa: E731
    rows = list(iter_rows(docs, encode, ctx_len=4, separator=0, docs_per_call=2))
    flat = np.concatenate(rows).tolist()
    assert all(len(r) == 4 for r in rows)
    assert flat == [97, 98, 99, 0, 100, 101, 0, 102, 103, 104, 105, 0]


def test_default_corpus_ships_with_gensim():
    path = default_corpus_path()
    assert sum(1 for _ in iter_documents(path)) == 300


def test_a_binary_file_is_refused_naming_the_file_and_the_first_bad_byte(tmp_path):
    # the case: the head of a GGUF model file given as a text corpus
    model = tmp_path / "b.txt"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(1, 256)) * 400)
    with pytest.raises(CorpusError, match=r"b\.txt is not text: a NUL byte at byte offset 5\b"):
        resolve_corpus(str(model))
    with pytest.raises(CorpusError, match="NUL byte at byte offset 5"):
        list(iter_documents(model))
    # a JSONL file whose binary part starts after the first 64 KiB: found as the file streams
    head = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5000)).encode()
    assert len(head) > 65536
    late = tmp_path / "late.jsonl"
    late.write_bytes(head + b"\x00\x01\x02")
    resolve_corpus(str(late))  # its first 64 KiB are text
    with pytest.raises(CorpusError, match=f"late\\.jsonl is not text: a NUL byte at byte offset {len(head):,}"):
        list(iter_documents(late))
    # and a NUL character written as a JSON escape
    (tmp_path / "esc.jsonl").write_text(json.dumps({"text": "a\u0000b"}) + "\n")
    with pytest.raises(CorpusError, match=r"esc\.jsonl:1: .*NUL"):
        list(iter_documents(tmp_path / "esc.jsonl"))


def test_bytes_that_are_mostly_not_utf8_are_refused_but_latin1_prose_is_read(tmp_path):
    rng = random.Random(0)
    noise = tmp_path / "noise.txt"
    data = bytes(rng.choice([b for b in range(1, 256) if b != 10]) for _ in range(4000))
    noise.write_bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        first = e.start
    with pytest.raises(CorpusError, match=rf"noise\.txt is not UTF-8 text: .* the first at byte offset {first}\b"):
        resolve_corpus(str(noise))
    with gzip.open(tmp_path / "noise.txt.gz", "wb") as f:
        f.write(data)
    with pytest.raises(CorpusError, match=r"noise\.txt\.gz \(decompressed\) is not UTF-8 text"):
        resolve_corpus(str(tmp_path / "noise.txt.gz"))
    # a few stray bytes (text in Latin-1) are read as before, as U+FFFD
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Le café de la gare est fermé le dimanche.\n".encode("latin-1") * 50)
    docs = list(iter_documents(resolve_corpus(str(latin))))
    assert len(docs) == 50 and docs[0] == "Le caf\ufffd de la gare est ferm\ufffd le dimanche."


def test_line_endings_are_read_as_python_text_mode_reads_them(tmp_path):
    raw = b"one\r\ntwo\rthree\n\n  \nfour \xe2\x9c\x93"
    (tmp_path / "c.txt").write_bytes(raw)
    with gzip.open(tmp_path / "c.txt.gz", "wb") as f:
        f.write(raw)
    expected = ["one", "two", "three", "four \u2713"]
    assert list(iter_documents(tmp_path / "c.txt")) == expected == list(iter_documents(tmp_path / "c.txt.gz"))
    with open(tmp_path / "c.txt", encoding="utf-8", errors="replace") as f:  # what the reader used to do
        assert [line.rstrip("\n") for line in f if line.strip()] == expected
