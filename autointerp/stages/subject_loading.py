"""Locating and loading what a run studies: the subject model, its tokenizer and its dictionaries.

Every stage loads them through here, from the run's config, so a cache built from Hub downloads is read
back with the very commits it was built from, and latent indices are checked against the dictionary
before minutes of work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from autointerp.cache.store import CacheMeta
from autointerp.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from autointerp.subjects.model import Subject


def _model_arg(config: RunConfig) -> str | None:
    return None if config.model in ("smollm2", "default") else config.model


def _revisions(config: RunConfig, meta: CacheMeta | None) -> tuple[str | None, str | None]:
    """(model, dictionary) revisions to load: the commits the run's cache was built from, when it was
    built from Hub downloads (so a branch that moved since cannot change the model under a run),
    else the revisions asked for."""
    from autointerp.subjects.sources import pinned_commit

    if meta is None:
        return config.model_revision, config.dictionary_revision
    return (
        pinned_commit(meta.model) or config.model_revision,
        pinned_commit(meta.dictionary) or config.dictionary_revision,
    )


def load_subject(config: RunConfig, meta: CacheMeta | None = None) -> Subject:
    from autointerp.subjects.in_memory import held_subject, is_in_memory
    from autointerp.subjects.model import load_subject as _load

    if is_in_memory(config.model):  # handed in from Python (autointerp.Run(..., model=...))
        return held_subject(config.model)
    return _load(_model_arg(config), revision=_revisions(config, meta)[0], dtype=getattr(torch, config.dtype))


def load_tokenizer(config: RunConfig, meta: CacheMeta | None = None) -> Any:
    from autointerp.subjects.in_memory import held_subject, is_in_memory
    from autointerp.subjects.model import load_tokenizer as _load

    if is_in_memory(config.model):
        return held_subject(config.model).tokenizer
    return _load(_model_arg(config), revision=_revisions(config, meta)[0])


def locate_dictionary(config: RunConfig, meta: CacheMeta | None = None) -> Any:
    """The run's dictionaries, fetched if they come from the Hub: `DictionarySource`s (one per hookpoint
    where the hookpoints are known before loading), or the name of a built-in one ("default", "neurons")."""
    from autointerp.subjects.dictionaries import DEFAULT_DICTIONARY
    from autointerp.subjects.in_memory import held_dictionary, is_in_memory
    from autointerp.subjects.sources import locate_dictionaries

    if is_in_memory(config.dictionary):  # handed in from Python (autointerp.Run(..., dictionary=...))
        return held_dictionary(config.dictionary, config.requested_hookpoints)
    if config.dictionary in ("default", "neurons"):
        if config.dictionary_revision is not None:
            raise ConfigError(f"--dictionary-revision is for Hub dictionaries, not --dictionary {config.dictionary}")
        if config.dictionary == "default" and config.hookpoints:  # chosen among the shipped folder's hookpoints
            return locate_dictionaries(str(DEFAULT_DICTIONARY), config.hookpoints)
        return config.dictionary
    return locate_dictionaries(config.dictionary, config.requested_hookpoints, _revisions(config, meta)[1])


def check_latents(config: RunConfig, num_latents: int, hookpoint: str | None = None) -> None:
    """Latent indices asked for (`--latents`) must exist in the dictionary (of every hookpoint)."""
    from autointerp.latent_choice import out_of_range

    bad = out_of_range(config.latents, num_latents)
    if bad:
        at = f" at {hookpoint}" if hookpoint else ""
        raise ConfigError(
            f"--latents {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''} out of range: "
            f"the dictionary{at} has {num_latents:,} latents (0..{num_latents - 1})"
        )
