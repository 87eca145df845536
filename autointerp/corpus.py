"""Reading a corpus and cutting it into fixed-length token rows, lazily.

A corpus is a local file (here) or a Hub dataset (corpus_hub.py), which of the two a run names is told by
corpus_choice.py; either way it yields documents, each a text or, from a pre-tokenized column, a list of
token ids that is used as it is.

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
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autointerp.errors import AutointerpError

# a text, or the token ids of a pre-tokenized corpus (used without the tokenizer)
Document = str | list[int]
DEFAULT_CORPUS_NAME = "gensim:lee_background.cor"
SNIFF_BYTES = 65536
MAX_BAD_SHARE = 0.1  # of the bytes so far that are not UTF-8; Latin-1 prose has a few percent
MIN_JUDGED_BYTES = 1024  # the share is judged once this much was read (or the file ended)
TOKEN_COLUMNS = ("input_ids", "tokens")  # pre-tokenized columns taken when the default text column is absent
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_SPLIT = "train"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


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


@dataclass(frozen=True)
class Corpus:
    """A corpus ready to be read: `name` is what the cache and config.json record of it (a local path,
    or `ORG/NAME@COMMIT/CONFIG/SPLIT` for a Hub dataset), `documents()` reads it from the start."""

    name: str

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class LocalCorpus(Corpus):
    path: Path
    text_column: str = DEFAULT_TEXT_COLUMN
    shuffle_seed: int | None = None
    shuffle_buffer: int = 1000

    def documents(self) -> Iterator[Document]:
        docs = iter_documents(self.path, self.text_column)
        if self.shuffle_seed is None:
            return docs
        return buffer_shuffled(docs, self.shuffle_seed, self.shuffle_buffer)


def buffer_shuffled(documents: Iterable[Document], seed: int, buffer: int) -> Iterator[Document]:
    """The documents in a seeded random order that needs no more than `buffer` of them in memory: each
    new one takes the place of a random one in the buffer, which is yielded. A document can move at
    most about `buffer` places ahead, so this mixes neighbours, not the two ends of a large corpus
    (read a random slice for that); it reads `buffer` documents before the first is yielded."""
    rng = random.Random(seed)
    held: list[Document] = []
    for doc in documents:
        if len(held) < buffer:
            held.append(doc)
            continue
        i = rng.randrange(buffer)
        yield held[i]
        held[i] = doc
    rng.shuffle(held)
    yield from held


def resolve_corpus(corpus: str | None) -> Path:
    """The corpus file, checked to exist and, for text and JSONL, to begin with text."""
    if corpus in (None, "", DEFAULT_CORPUS_NAME, "default"):
        return default_corpus_path()
    path = Path(corpus)
    if not path.is_file():
        hint = "" if HUB_ID.fullmatch(corpus) else " (a Hub dataset is named ORG/NAME)"
        raise CorpusError(f"corpus file not found: {path}{hint}")
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


def tokenized(
    documents: list[Document], encode: Callable[[list[str]], list[list[int]]], vocab_size: int | None = None
) -> list[list[int]]:
    """Each document's token ids, in order: texts through `encode` (in one call), token-id documents as
    they are, refused when an id is not below `vocab_size`."""
    texts = [d for d in documents if isinstance(d, str)]
    encoded = iter(encode(texts) if texts else [])
    out = []
    for doc in documents:
        if isinstance(doc, str):
            out.append(next(encoded))
            continue
        if vocab_size is not None and doc and max(doc) >= vocab_size:
            raise CorpusError(
                f"the corpus holds token id {max(doc)}, but the tokenizer has {vocab_size} tokens: pre-tokenized "
                "documents must come from the subject model's tokenizer"
            )
        out.append(doc)
    return out


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


def choose_column(columns: list[str], text_column: str, where: str) -> str:
    """The column to read: `text_column`; where that is the default 'text' and absent, a pre-tokenized
    `input_ids` or `tokens` column. Anything else is an error naming the columns there are."""
    if text_column in columns:
        return text_column
    if text_column == DEFAULT_TEXT_COLUMN:
        for name in TOKEN_COLUMNS:
            if name in columns:
                return name
    raise CorpusError(f"{where} has no column {text_column!r}; columns: {', '.join(columns) or 'none'}")


def document_of(value: object, where: Callable[[], str]) -> Document | None:
    """A column's value as a document: a text, or a list of token ids; None for an empty one. `where`
    names the row for the error a value of another kind (a number, a list of strings) gets."""
    if isinstance(value, str):
        if "\0" in value:
            raise CorpusError(f"{where()}: the text holds a NUL character (\\u0000)")
        return value if value.strip() else None
    if value is None:
        return None
    if hasattr(value, "tolist"):  # a numpy array
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        ids = list(value)
        if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            return ids or None
    shown = repr(value)
    raise CorpusError(
        f"{where()}: {shown[:60] + ('...' if len(shown) > 60 else '')} is neither text nor a list of token ids"
    )


def iter_documents(path: Path, text_column: str = DEFAULT_TEXT_COLUMN) -> Iterator[Document]:
    """Yield documents: a line of a text file, or the column of a JSONL / Parquet row (a text, or token
    ids from a pre-tokenized column; see `choose_column`)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        read = choose_column(pf.schema_arrow.names, text_column, str(path))
        n = 0
        for batch in pf.iter_batches(columns=[read], batch_size=1024):
            for value in batch.column(0).to_pylist():
                n += 1
                doc = document_of(value, lambda: f"{path}: row {n} of column {read!r}")  # noqa: B023
                if doc is not None:
                    yield doc
        return
    is_jsonl = name.endswith((".jsonl", ".jsonl.gz", ".json"))
    check_text_file(path)
    column: str | None = None
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: not a JSON object")
            if column is None:  # chosen by the first row, so that every row is read from the same field
                try:
                    column = choose_column(list(obj), text_column, f"{path}:{lineno}")
                except CorpusError:
                    raise CorpusError(f"{path}:{lineno}: no {text_column!r} field") from None
            if column not in obj:
                raise CorpusError(f"{path}:{lineno}: no {column!r} field")
            doc = document_of(obj[column], lambda: f"{path}:{lineno}: the {column!r} field")  # noqa: B023
            if doc is not None:
                yield doc
        else:
            yield line


def iter_rows(
    documents: Iterable[Document],
    encode: Callable[[list[str]], list[list[int]]],
    *,
    ctx_len: int,
    separator: int | None,
    docs_per_call: int = 64,
    vocab_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Concatenate tokenised documents (with `separator` between them) and cut rows of `ctx_len`.

    Texts are tokenised with `encode`; token-id documents are used as they are, checked against
    `vocab_size` (ids of another tokenizer would index past the model's embedding).
    The tail shorter than a row is dropped, as delphi does, so every row has the same length.
    """
    buffer: list[int] = []
    group: list[Document] = []

    def flush() -> Iterator[np.ndarray]:
        nonlocal buffer
        for ids in tokenized(group, encode, vocab_size):
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
