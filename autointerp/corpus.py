"""Reading a corpus and cutting it into fixed-length token rows, lazily.

Documents are streamed from disk and tokenised in small groups, so a corpus larger than memory
costs no more than a small one; the row order is a pure function of the file, which is what lets
an interrupted cache resume by skipping rows it already has.

A text or JSONL corpus must be text: a file holding a NUL byte, or in which more than a tenth of
the bytes are not UTF-8, is refused with the first bad byte's offset (a model file or an archive
given by mistake would otherwise be cached and explained as excerpts of garbage). The first 64 KiB
are looked at before anything else; the rest as it streams.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from autointerp.errors import AutointerpError

DEFAULT_CORPUS_NAME = "gensim:lee_background.cor"
SNIFF_BYTES = 65536
MAX_BAD_SHARE = 0.1  # of the bytes so far that are not UTF-8; Latin-1 prose has a few percent
MIN_JUDGED_BYTES = 1024  # the share is judged once this much was read (or the file ended)


class CorpusError(AutointerpError):
    """The corpus cannot be read or holds no text."""


def default_corpus_path() -> Path:
    """gensim's wheel ships 300 news articles, one per line: the embedded default corpus."""
    try:
        import gensim.test
    except ImportError as e:
        raise CorpusError("the default corpus comes from gensim: pip install 'autointerp[embedded]'") from e
    path = Path(gensim.test.__file__).parent / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise CorpusError(f"gensim is installed but lacks its test corpus {path}")
    return path


def resolve_corpus(corpus: str | None) -> Path:
    """The corpus file, checked to exist and, for text and JSONL, to begin with text."""
    if corpus in (None, "", DEFAULT_CORPUS_NAME, "default"):
        return default_corpus_path()
    path = Path(corpus)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    check_text_file(path)
    return path


class TextCheck:
    """Refuses bytes that are not text as they stream by: a NUL byte, or too high a share of bytes
    that do not decode as UTF-8. Offsets count from the start of the (decompressed) file."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.bad = 0
        self.first_bad: int | None = None

    def decode(self, data: bytes, *, final: bool = False) -> str:
        nul = data.find(b"\0")
        if nul >= 0:
            raise CorpusError(
                f"{self._name()} is not text: a NUL byte at byte offset {self.offset + nul:,} (a binary file, or "
                "text in UTF-16?); give UTF-8 text (one document per line), JSONL or Parquet"
            )
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())  # a real U+FFFD in the text is not a bad byte
        if bad > 0:
            if self.first_bad is None:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.first_bad = self.offset + e.start
            self.bad += bad
        self.offset += len(data)
        if self.bad and (final or self.offset >= MIN_JUDGED_BYTES) and self.bad > MAX_BAD_SHARE * self.offset:
            raise CorpusError(
                f"{self._name()} is not UTF-8 text: {self.bad:,} of its first {self.offset:,} bytes do not "
                f"decode, the first at byte offset {self.first_bad:,}; give UTF-8 text, JSONL or Parquet"
            )
        return text

    def _name(self) -> str:
        return f"corpus {self.path}" + (" (decompressed)" if self.path.name.lower().endswith(".gz") else "")


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(".parquet")


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def check_text_file(path: Path) -> None:
    """Look at the first 64 KiB of a text or JSONL corpus: fail now, naming the first bad byte, if it is
    not text (Parquet files are not text and are read by pyarrow)."""
    if _is_parquet(path):
        return
    try:
        with _open_binary(path) as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise CorpusError(f"cannot read corpus {path}: {e}") from None
    TextCheck(path).decode(head, final=True)


def _lines(path: Path) -> Iterator[str]:
    """The file's lines as Python's text mode gives them (a line ends at \\n, \\r\\n or \\r; bytes that are
    not UTF-8 read as U+FFFD), each checked to be text on the way."""
    check = TextCheck(path)
    try:
        with _open_binary(path) as f:
            for raw in f:
                text = check.decode(raw)
                if text.endswith("\n"):
                    text = text[:-1]
                if text.endswith("\r"):
                    text = text[:-1]
                yield from text.split("\r")
            check.decode(b"", final=True)
    except (OSError, EOFError) as e:
        raise CorpusError(f"cannot read corpus {path}: {e}") from None


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
    is_jsonl = name.endswith((".jsonl", ".jsonl.gz", ".json"))
    check_text_file(path)
    for lineno, line in enumerate(_lines(path), 1):
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
            if isinstance(text, str) and "\0" in text:
                raise CorpusError(f"{path}:{lineno}: the {text_column!r} text holds a NUL character (\\u0000)")
            if isinstance(text, str) and text.strip():
                yield text
        else:
            yield line


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
