"""Which corpus a run names: an existing local path is always the file; otherwise a name of the form
ORG/NAME is a Hub dataset id. Apart from the two readers (corpus.py for files, corpus_hub.py for the Hub),
since the Hub reader builds on the file reader's documents and helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autointerp.corpus import DEFAULT_SPLIT, DEFAULT_TEXT_COLUMN, HUB_ID, Corpus, LocalCorpus, resolve_corpus
from autointerp.corpus_hub import open_hub_corpus
from autointerp.errors import ConfigError

if TYPE_CHECKING:
    from autointerp.config import RunConfig

_FILE_SUFFIXES = (".txt", ".cor", ".jsonl", ".json", ".parquet", ".gz", ".csv")


def is_hub_id(name: str) -> bool:
    """A name of the form ORG/NAME that is no existing local path and does not end like a corpus file
    (`data/c.txt` that is missing is a missing file, not a dataset to look for on the Hub)."""
    return HUB_ID.fullmatch(name) is not None and not Path(name).exists() and not name.lower().endswith(_FILE_SUFFIXES)


def open_corpus(
    name: str | None,
    *,
    text_column: str = DEFAULT_TEXT_COLUMN,
    config: str | None = None,
    split: str = DEFAULT_SPLIT,
    revision: str | None = None,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 1000,
) -> Corpus:
    """The corpus `name` names, checked before any model loads: a local file (it exists and, for text
    and JSONL, begins with text) or a Hub dataset (its config, split and column exist; its revision is
    resolved to a commit). `config`, `split` and `revision` are for Hub datasets only."""
    if name is not None and is_hub_id(name):
        return open_hub_corpus(
            name,
            config=config,
            split=split,
            revision=revision,
            text_column=text_column,
            shuffle_seed=shuffle_seed,
            shuffle_buffer=shuffle_buffer,
        )
    given = [
        flag for flag, value in (("--corpus-config", config), ("--corpus-revision", revision)) if value is not None
    ] + (["--corpus-split"] if split != DEFAULT_SPLIT else [])
    if given:
        raise ConfigError(f"{', '.join(given)} is for a Hub dataset --corpus ORG/NAME, not the local corpus {name}")
    path = resolve_corpus(name)
    return LocalCorpus(str(path), path, text_column, shuffle_seed, shuffle_buffer)


def corpus_of(run: RunConfig) -> Corpus:
    """The corpus a run's settings name (`--corpus` and the `--corpus-*` / `--text-column` options)."""
    return open_corpus(
        run.corpus,
        text_column=run.text_column,
        config=run.corpus_config,
        split=run.corpus_split,
        revision=run.corpus_revision,
        shuffle_seed=run.corpus_shuffle_seed,
        shuffle_buffer=run.corpus_shuffle_buffer,
    )
