"""The cache stage on this machine: the corpus streamed through the subject model and its dictionaries.

Every hookpoint is cached in one pass over the corpus. `cache_part` caches a range of the corpus rows
(a Ray shard's: `distributed/caching.py` runs those parts and merges them); which of the two a run
uses is chosen by `api.Run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from autointerp.cache.store import CacheMeta
from autointerp.config import RunConfig
from autointerp.corpus import Corpus, CorpusError
from autointerp.corpus_choice import corpus_of
from autointerp.results import RunFiles
from autointerp.stages.subject_loading import check_latents, load_subject, load_tokenizer, locate_dictionary


def cache_stage(
    files: RunFiles,
    config: RunConfig,
    *,
    progress: bool = True,
    resolved: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build (or finish) the activation caches, every hookpoint in one pass over the corpus; returns what
    was resolved (names, sizes, the contexts) for config.json. `echo` is told the contexts chosen, and why."""
    finished = finished_cache(files, config, resolved)
    if finished is not None:
        return finished
    corpus, dictionary = check_cache_inputs(config)
    config, contexts, chosen = prepare_contexts(config, dictionary, echo)
    return {**build_cache(files, config, corpus, dictionary, progress=progress, contexts=contexts), **chosen}


def prepare_contexts(
    config: RunConfig, dictionary: Any, echo: Callable[[str], None] | None = None
) -> tuple[RunConfig, Any, dict[str, Any]]:
    """The contexts the run caches (a `ContextSpec`), said through `echo`; the config with the context length
    they resolved, and what config.json records of them (the choice, and why)."""
    contexts = context_spec(config, dictionary)
    (echo or (lambda text: None))(contexts.describe())
    config = replace(config, cache=replace(config.cache, ctx_len=contexts.ctx_len))
    return config, contexts, {"contexts": {**contexts.to_dict(), "why": list(contexts.reasons)}}


def finished_cache(files: RunFiles, config: RunConfig, resolved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored `resolved` of a folder whose caches are complete (None while they are not), after checking
    the latents asked for against the caches already there. A complete cache returns at once: the config
    merge has already checked that the options agree, so the model need not be loaded again to resume."""
    from autointerp.cache.store import cache_complete, read_metas

    config.validate()
    existing = read_metas(files.cache) or {}
    for hookpoint, meta in existing.items():
        check_latents(config, meta.num_latents, hookpoint if len(existing) > 1 else None)
    if resolved and cache_complete(files.cache):
        return resolved
    return None


def build_cache(
    files: RunFiles,
    config: RunConfig,
    corpus: Corpus,
    dictionary: Any,
    *,
    progress: bool = True,
    contexts: Any = None,
) -> dict[str, Any]:
    """The run's caches built (or finished) in this process from the checked inputs, packed as `contexts`
    (None: resolved now); what they resolved."""
    from autointerp.cache.build import build_caches

    model, encoders, targets, rows = load_cache_inputs(config, corpus, dictionary, contexts=contexts)
    metas = build_caches(
        files.cache, rows, model=model, targets=targets, settings=config.cache, device=config.device, progress=progress
    )
    return resolved_of(config, metas, encoders)


def cache_part(
    folder: Path,
    config: RunConfig,
    first_row: int,
    n_rows: int,
    open_models: Callable[[RunConfig, Any], tuple[Any, list[Any]]] | None = None,
) -> dict[str, Any]:
    """The cache of corpus rows [first_row, first_row + n_rows), every hookpoint, in `folder` (a Ray
    shard's; resumes as any cache does), its windows numbered as in the whole corpus; what it resolved.
    `open_models` (default `open_cache_models`) lets a worker that caches several shards keep its loaded
    model and dictionaries from one shard to the next."""
    from itertools import islice

    from autointerp.cache.build import build_caches

    corpus, dictionary = check_cache_inputs(config)
    models = (open_models or open_cache_models)(config, dictionary)
    model, encoders, targets, rows = load_cache_inputs(
        config, corpus, dictionary, check_empty=first_row == 0, models=models
    )
    for _, _, meta in targets:
        meta.max_tokens = n_rows * meta.ctx_len
    metas = build_caches(
        folder,
        islice(rows, first_row, first_row + n_rows),
        model=model,
        targets=targets,
        settings=config.cache,
        device=config.device,
        progress=False,
        first_row=first_row,
    )
    return resolved_of(config, metas, encoders)


def check_cache_inputs(config: RunConfig) -> tuple[Corpus, Any]:
    """The corpus and the dictionaries (located, fetched if from the Hub), after checking what can fail
    before minutes of model loading and caching: a missing or binary corpus, a Hub dataset's config,
    split or column that is not there, a dictionary, hookpoint or
    revision not on the Hub, latent indices the dictionary does not have (its size is in the
    checkpoint's header), a dictionary setting that changes what the encoder sees and is not honoured."""
    from autointerp.subjects.contexts import recorded_contexts
    from autointerp.subjects.dictionaries import peek_num_latents

    corpus = corpus_of(config)
    dictionary = locate_dictionary(config)
    sizes: list[tuple[str | None, int | None]]
    if isinstance(dictionary, str):
        hookpoints = config.requested_hookpoints
        sizes = [(hookpoints[0] if hookpoints else None, peek_num_latents(dictionary, config.hookpoint))]
    else:
        sizes = [(source.hookpoint, peek_num_latents(source.path, source.hookpoint)) for source in dictionary]
    for name, size in sizes:
        if size is not None:
            check_latents(config, size, name if len(sizes) > 1 else None)
    recorded_contexts(dictionary)
    return corpus, dictionary


def context_spec(config: RunConfig, dictionary: Any, tokenizer: Any = None) -> Any:
    """The contexts the run caches (`subjects.contexts`): `--ctx-len` / `--prepend-bos` over what the
    dictionaries record, over the tokenizer's default (`tokenizer` None: the subject model's, loaded alone)."""
    from autointerp.subjects.contexts import recorded_contexts, resolve_contexts

    s = config.cache
    return resolve_contexts(
        recorded_contexts(dictionary),
        tokenizer if tokenizer is not None else load_tokenizer(config),
        ctx_len=s.ctx_len,
        prepend_bos=s.prepend_bos,
        window_len=s.window_len,
    )


def open_cache_models(config: RunConfig, dictionary: Any) -> tuple[Any, list[Any]]:
    """The subject model and its dictionaries (each (encoder, hookpoint)) on `config.device`. Caching
    attaches its hooks for the length of a pass only, so what this returns can serve several passes."""
    from autointerp.subjects.attach import open_dictionaries

    subject = load_subject(config)
    subject.model.to(config.device)
    opened = open_dictionaries(subject.model, dictionary, config.requested_hookpoints, neurons_k=config.neurons_k)
    for encoder, point in opened:
        check_latents(config, encoder.num_latents, point.name if len(opened) > 1 else None)
        encoder.to(config.device)
    return subject, opened


def load_cache_inputs(
    config: RunConfig,
    corpus: Corpus,
    dictionary: Any,
    *,
    check_empty: bool = True,
    models: tuple[Any, list[Any]] | None = None,
    contexts: Any = None,
) -> tuple[torch.nn.Module, list[Any], list[tuple[Any, Any, CacheMeta]], Iterator[Any]]:
    """The subject model and dictionaries on `config.device` (`models`, already open, or opened now), each
    hookpoint's (hookpoint, encoder, meta), and the corpus rows, packed as `contexts` (a `ContextSpec`;
    None: resolved now)."""
    subject, opened = models if models is not None else open_cache_models(config, dictionary)
    if contexts is None:
        contexts = context_spec(config, dictionary, subject.tokenizer)
    rows = corpus_rows(config, subject.tokenizer, corpus, check_empty=check_empty, contexts=contexts)
    s = config.cache
    targets = [
        (
            hookpoint,
            encoder,
            CacheMeta(
                model=subject.name,
                dictionary=encoder.name,
                hookpoint=hookpoint.name,
                corpus=corpus.name,
                num_latents=encoder.num_latents,
                ctx_len=contexts.ctx_len,
                window_len=s.window_len,
                top_k=s.top_k,
                sample_size=s.sample_size,
                seed=s.seed,
                max_tokens=config.n_tokens,
                contexts=contexts.to_dict(),
            ),
        )
        for encoder, hookpoint in opened
    ]
    return subject.model, [encoder for encoder, _ in opened], targets, rows


def corpus_rows(
    config: RunConfig, tokenizer: Any, corpus: Corpus, *, check_empty: bool = True, contexts: Any = None
) -> Iterator[Any]:
    """The corpus as contexts (rows) packed as the dictionary was trained (`contexts`, a `ContextSpec`;
    None: resolved now); a corpus too short for one row is an error (`check_empty`). Documents of token
    ids (a pre-tokenized corpus) are used as they are."""
    from autointerp.subjects.contexts import pack_contexts

    if contexts is None:
        contexts = context_spec(config, locate_dictionary(config), tokenizer)
    rows = pack_contexts(corpus.documents(), tokenizer, contexts)
    first = next(rows, None)
    if first is None:
        if check_empty:
            raise CorpusError(f"corpus {corpus} holds fewer than {contexts.ctx_len} tokens of text: nothing to cache")
        return iter(())

    def all_rows() -> Iterator[Any]:
        yield first
        yield from rows

    return all_rows()


def resolved_of(config: RunConfig, metas: list[CacheMeta], encoders: list[Any]) -> dict[str, Any]:
    """What config.json records of a run's cache: model, corpus and tokens, and each hookpoint's dictionary
    and size (`by_hookpoint`). A run of one hookpoint also has them at the top, as runs always had."""
    import os.path

    from autointerp.subjects.in_memory import is_in_memory

    first = metas[0]
    by_hookpoint = {
        m.hookpoint: {
            "dictionary": m.dictionary,
            "num_latents": m.num_latents,
            "dictionary_format": e.format,
            "d_in": e.d_in,
            # an object handed in from Python leaves no file behind: its cfg is what says what it was
            **({"dictionary_cfg": e.cfg} if is_in_memory(e.name) else {}),
        }
        for m, e in zip(metas, encoders, strict=True)
    }
    out: dict[str, Any] = {
        "model": first.model,
        "corpus": first.corpus,
        "n_tokens": first.n_tokens,
        "hookpoints": [m.hookpoint for m in metas],
        "by_hookpoint": by_hookpoint,
    }
    if len(metas) == 1:
        return {**out, "hookpoint": first.hookpoint, **by_hookpoint[first.hookpoint]}
    names = [m.dictionary for m in metas]
    try:
        common = os.path.commonpath(names)
    except ValueError:  # absolute and relative names mixed
        common = ""
    return {
        **out,
        "hookpoint": None,
        "dictionary": common if common not in ("", "/") else config.dictionary,
        "num_latents": sum(m.num_latents for m in metas),
    }


def run_hookpoints(resolved: dict[str, Any]) -> list[str]:
    """The hookpoints a run's `resolved` names (a folder written before runs had several names one)."""
    if resolved.get("hookpoints"):
        return list(resolved["hookpoints"])
    return [resolved["hookpoint"]] if resolved.get("hookpoint") else []


def run_dictionaries(resolved: dict[str, Any]) -> dict[str, str]:
    """Each hookpoint's dictionary, as `resolved` names it."""
    by = resolved.get("by_hookpoint") or {}
    return {hp: info["dictionary"] for hp, info in by.items() if isinstance(info, dict) and info.get("dictionary")}
