"""Reading a corpus and cutting it into fixed-length token rows, lazily.

Documents are streamed from disk and tokenised in small groups, so a corpus larger than memory
costs no more than a small one; the row order is a pure function of the file, which is what lets
an interrupted cache resume by skipping rows it already has.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

DEFAULT_CORPUS_NAME = "gensim:lee_background.cor"


class CorpusError(ValueError):
    """The corpus cannot be read or holds no text."""


def default_corpus_path() -> Path:
    """gensim's wheel ships 299 news articles, one per line: the embedded default corpus."""
    try:
        import gensim.test
    except ImportError as e:
        raise CorpusError("the default corpus comes from gensim: pip install 'autointerp[embedded]'") from e
    path = Path(gensim.test.__file__).parent / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise CorpusError(f"gensim is installed but lacks its test corpus {path}")
    return path


def resolve_corpus(corpus: str | None) -> Path:
    if corpus in (None, "", DEFAULT_CORPUS_NAME, "default"):
        return default_corpus_path()
    path = Path(corpus)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    return path


def iter_documents(path: Path, text_column: str = "text") -> Iterator[str]:
    """Yield documents: a line of a text file, or the text column of a JSONL / Parquet row."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_column not in pf.schema_arrow.names:
            raise CorpusError(f"{path} has no column {text_column!r}; columns: {pf.schema_arrow.names}")
        for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text and text.strip():
                    yield text
        return
    opener = gzip.open if name.endswith(".gz") else open
    is_jsonl = name.endswith((".jsonl", ".jsonl.gz", ".json"))
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if is_jsonl:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{lineno}: not JSON ({e})") from None
                if not isinstance(obj, dict) or text_column not in obj:
                    raise CorpusError(f"{path}:{lineno}: no {text_column!r} field")
                text = obj[text_column]
                if isinstance(text, str) and text.strip():
                    yield text
            else:
                yield line.rstrip("\n")


def iter_rows(
    documents: Iterator[str],
    encode: Callable[[list[str]], list[list[int]]],
    *,
    ctx_len: int,
    separator: int | None,
    docs_per_call: int = 64,
) -> Iterator[np.ndarray]:
    """Concatenate tokenised documents (with `separator` between them) and cut rows of `ctx_len`.

    The tail shorter than a row is dropped, as delphi does, so every row has the same length.
    """
    buffer: list[int] = []
    group: list[str] = []

    def flush() -> Iterator[np.ndarray]:
        nonlocal buffer
        for ids in encode(group):
            buffer.extend(ids)
            if separator is not None:
                buffer.append(separator)
        group.clear()
        n_full = len(buffer) // ctx_len
        for i in range(n_full):
            yield np.asarray(buffer[i * ctx_len : (i + 1) * ctx_len], dtype=np.int32)
        buffer = buffer[n_full * ctx_len :]

    for doc in documents:
        group.append(doc)
        if len(group) >= docs_per_call:
            yield from flush()
    if group:
        yield from flush()
