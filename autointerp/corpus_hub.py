"""A corpus from a Hugging Face Hub dataset, streamed with the `datasets` library.

Streaming reads the data files in order and only as far as the rows asked for: a run that needs
100,000 tokens of a ten-billion-token dataset reads the first data file's first row groups, and the
files after it are never fetched. The cache pulls documents until it has its tokens and then stops.

The dataset's revision (a branch, a tag, or `main`) is resolved to a commit once, when the corpus is
opened, and every read goes to that commit; the name the cache and config.json record is
`ORG/NAME@COMMIT/CONFIG/SPLIT`, so a branch that moves cannot change a run's corpus unnoticed.

A split may carry a slice of rows, as `datasets` writes them: `train[:10000]`, `train[1000:2000]`,
`train[:1%]`, `train[10%:20%]`. Streaming cannot slice by itself, so the rows are skipped and counted
here; a percentage needs the split's number of rows, which comes from the dataset card's
`dataset_info` when it records one, else from the footers of the split's Parquet files (one small
read each).

With HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) set nothing is asked of the network: the dataset is read
from the `datasets` cache that a non-streaming `datasets.load_dataset(ORG/NAME, CONFIG)` filled, at
the commit it was prepared from. Streaming keeps no copy, so a dataset only ever streamed is not
there; the error says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from autointerp.corpus import Corpus, CorpusError, Document, buffer_shuffled, choose_column, document_of
from autointerp.corpus_split import SplitSlice, parse_split
from autointerp.errors import MissingPackageError

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubCorpus(Corpus):
    """A Hub dataset at one commit; `documents()` streams it again from the start each time."""

    repo_id: str
    commit: str
    config: str
    split: SplitSlice
    column: str
    first_row: int = 0
    stop_row: int | None = None
    shuffle_seed: int | None = None
    shuffle_buffer: int = 1000

    def documents(self) -> Iterator[Document]:
        docs = self._rows()
        if self.shuffle_seed is None:
            return docs
        return buffer_shuffled(docs, self.shuffle_seed, self.shuffle_buffer)

    def _rows(self) -> Iterator[Document]:
        builder = _builder(self.repo_id, self.config, self.commit)
        stream = builder.as_streaming_dataset(split=self.split.name).select_columns([self.column])
        where = f"Hub dataset {self.repo_id} (config {self.config}, split {self.split.name})"
        row = self.first_row
        for example in islice(iter(stream), self.first_row, self.stop_row):
            row += 1
            doc = document_of(example[self.column], lambda: f"{where}: row {row - 1} of column {self.column!r}")  # noqa: B023
            if doc is not None:
                yield doc


def open_hub_corpus(
    repo_id: str,
    *,
    config: str | None,
    split: str,
    revision: str | None,
    text_column: str,
    shuffle_seed: int | None,
    shuffle_buffer: int,
) -> HubCorpus:
    """The dataset checked as far as can be without reading its rows: the repo, revision, config, split
    and column exist (else a `CorpusError` naming what there is), a percentage slice can be counted."""
    try:
        wanted = parse_split(split)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    builder = _builder(repo_id, config, revision)
    commit = str(builder.hash)
    if revision and _COMMIT.fullmatch(revision) and commit != revision:  # offline: the cache holds another
        raise CorpusError(
            f"Hub dataset {repo_id!r} at commit {revision} is not in the local datasets cache (it holds {commit}) "
            f"and {_offline_reason()}"
        )
    config_name = str(builder.config.name)
    splits = _split_names(builder)
    if wanted.name not in splits:
        raise CorpusError(
            f"Hub dataset {repo_id} (config {config_name}) has no split {wanted.name!r}; splits: {', '.join(splits)}"
        )
    columns = _columns(builder, wanted.name)
    column = choose_column(columns, text_column, f"Hub dataset {repo_id} (config {config_name}, split {wanted.name})")
    n_rows = _n_rows(builder, wanted, repo_id) if wanted.needs_length else None
    first, stop = wanted.rows(n_rows)
    return HubCorpus(
        name=f"{repo_id}@{commit}/{config_name}/{split.replace(' ', '')}",
        repo_id=repo_id,
        commit=commit,
        config=config_name,
        split=wanted,
        column=column,
        first_row=first,
        stop_row=stop,
        shuffle_seed=shuffle_seed,
        shuffle_buffer=shuffle_buffer,
    )


# ---------------------------------------------------------------- talking to `datasets`


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise MissingPackageError(
            "a Hub dataset --corpus is read with the datasets library: pip install datasets"
        ) from e
    return datasets


def _offline() -> bool:
    return bool(_datasets().config.HF_HUB_OFFLINE)


def _offline_reason() -> str:
    return "HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) is set" if _offline() else "the Hub could not be reached"


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _builder(repo_id: str, config: str | None, revision: str | None) -> Any:
    """The dataset's builder at `revision`, its errors turned into one line naming what exists."""
    datasets = _datasets()
    at = f" at revision {revision!r}" if revision else ""
    try:
        return datasets.load_dataset_builder(repo_id, name=config, revision=revision)
    except datasets.exceptions.DatasetNotFoundError as e:
        if revision and "Revision" in str(e):
            raise CorpusError(f"Hub dataset {repo_id!r} has no revision {revision!r} (at {_endpoint()})") from None
        raise CorpusError(
            f"--corpus {repo_id}: no local file of that name, and no dataset {repo_id!r} on the Hub at {_endpoint()} "
            "(a private or gated one needs a token: HF_TOKEN or `hf auth login`)"
        ) from None
    except ConnectionError as e:
        raise CorpusError(
            f"Hub dataset {repo_id!r}{at} is not in the local datasets cache and {_offline_reason()} ({e}); "
            f"streaming keeps no copy: fill the cache once with datasets.load_dataset({repo_id!r}"
            f"{', ' + repr(config) if config else ''}) with the Hub reachable"
        ) from None
    except ValueError as e:
        raise _config_error(repo_id, config, revision, e) from None
    except RuntimeError as e:  # a dataset of a loading script, which datasets no longer runs
        if "script" not in str(e).lower():
            raise
        raise CorpusError(f"Hub dataset {repo_id}: {str(e).splitlines()[0]}") from None


def _config_error(repo_id: str, config: str | None, revision: str | None, error: ValueError) -> CorpusError:
    """A config that is not there, or none given where several are and none is the default."""
    message = str(error)
    listed = re.search(r"(?:Available|available configs)[^\[]*(\[[^\]]*\])", message)
    names = re.findall(r"'([^']*)'", listed.group(1)) if listed else []
    where = "the local datasets cache holds" if "cache" in message else "configs:"
    if config is None and "missing" in message.lower():
        return CorpusError(
            f"Hub dataset {repo_id} has several configs and no default: give --corpus-config, one of {', '.join(names)}"
        )
    if config is not None and names:
        return CorpusError(f"Hub dataset {repo_id} has no config {config!r}; {where} {', '.join(names)}")
    return CorpusError(f"Hub dataset {repo_id}{' config ' + repr(config) if config else ''}: {message.splitlines()[0]}")


def _split_names(builder: Any) -> list[str]:
    if builder.config.data_files:
        return [str(name) for name in builder.config.data_files]
    return [str(name) for name in (builder.info.splits or {})]


def _columns(builder: Any, split: str) -> list[str]:
    """The split's columns: from the dataset's features when known (the card, a Parquet schema, the
    datasets cache), else from its first row."""
    if builder.info.features is None:
        builder.as_streaming_dataset(split=split)  # Parquet and Arrow builders read the schema here
    if builder.info.features is not None:
        return list(builder.info.features)
    first = next(iter(builder.as_streaming_dataset(split=split)), None)
    return list(first) if first is not None else []


def _n_rows(builder: Any, wanted: SplitSlice, repo_id: str) -> int:
    """The split's number of rows, for a percentage or negative slice: as the card or the datasets cache
    records it, else summed from the Parquet files' footers."""
    known = (builder.info.splits or {}).get(wanted.name)
    if known is not None and known.num_examples:
        return int(known.num_examples)
    files = [str(f) for f in builder.config.data_files[wanted.name]]
    if not all(f.lower().endswith(".parquet") for f in files):
        raise CorpusError(
            f"--corpus-split {wanted.name}[{wanted.start or ''}:{wanted.stop or ''}]: a percentage or a bound from "
            f"the end needs the split's number of rows, which Hub dataset {repo_id}'s card does not record and its "
            "files (not Parquet) do not tell without reading them all; give row numbers, e.g. "
            f"{wanted.name}[:100000]"
        )
    import pyarrow.parquet as pq
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    total = 0
    for url in files:
        with fs.open(url, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
