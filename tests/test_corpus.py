from __future__ import annotations

import json

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
