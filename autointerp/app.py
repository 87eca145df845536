"""Wiring: turn a `RunConfig` into loaded models, judges and scorers, and run the stages on a folder.

This is the one place that knows how the pieces are built from names; the pieces themselves take
ready objects, which is what lets tests hand them scripted judges and tiny caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from autointerp.cache.store import ActivationCache, CacheMeta, HookpointCaches
from autointerp.config import ConfigError, RunConfig
from autointerp.corpus import CorpusError, iter_documents, iter_rows, resolve_corpus
from autointerp.embeddings import Embedder
from autointerp.explainers import TOKENS_EXPLAINER
from autointerp.llm.base import Judge, check_judge_ready
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, run_controls, select_units
from autointerp.records import ExplanationRow, LatentId, ScoreRow
from autointerp.results import RunFiles, materialize
from autointerp.sampling import Sampler, token_decoder
from autointerp.scorers.base import Scorer, ScorerContext
from autointerp.scorers.registry import build_scorers

if TYPE_CHECKING:
    import pandas as pd

    from autointerp.scorers.intervention import SteeringSubject
    from autointerp.subjects.model import Subject
    from autointerp.subjects.sources import DictionarySource


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
    from autointerp.subjects.model import load_subject as _load

    return _load(_model_arg(config), revision=_revisions(config, meta)[0], dtype=getattr(torch, config.dtype))


def load_tokenizer(config: RunConfig, meta: CacheMeta | None = None) -> Any:
    from autointerp.subjects.model import load_tokenizer as _load

    return _load(_model_arg(config), revision=_revisions(config, meta)[0])


def locate_dictionary(config: RunConfig, meta: CacheMeta | None = None) -> str | list[DictionarySource]:
    """The run's dictionaries, fetched if they come from the Hub: `DictionarySource`s (one per hookpoint
    where the hookpoints are known before loading), or the name of a built-in one ("default", "neurons")."""
    from autointerp.subjects.dictionaries import DEFAULT_DICTIONARY
    from autointerp.subjects.sources import locate_dictionaries

    if config.dictionary in ("default", "neurons"):
        if config.dictionary_revision is not None:
            raise ConfigError(f"--dictionary-revision is for Hub dictionaries, not --dictionary {config.dictionary}")
        if config.dictionary == "default" and config.hookpoints:  # chosen among the shipped folder's hookpoints
            return locate_dictionaries(str(DEFAULT_DICTIONARY), config.hookpoints)
        return config.dictionary
    return locate_dictionaries(config.dictionary, config.requested_hookpoints, _revisions(config, meta)[1])


def cache_stage(
    files: RunFiles,
    config: RunConfig,
    *,
    progress: bool = True,
    resolved: dict[str, Any] | None = None,
    ray: Any = None,
) -> dict[str, Any]:
    """Build (or finish) the activation caches, every hookpoint in one pass over the corpus; returns what
    was resolved (names, sizes) for config.json. With `ray` (a `RayOptions`), shards of the corpus rows
    are cached on a Ray cluster and merged into the same cache.

    A folder whose caches are complete returns its stored `resolved` at once: the config merge has
    already checked that the options agree, so the model need not be loaded again to resume.
    """
    from autointerp.cache.build import build_caches
    from autointerp.cache.store import cache_complete, read_metas

    config.validate()
    existing = read_metas(files.cache) or {}
    for hookpoint, meta in existing.items():
        check_latents(config, meta.num_latents, hookpoint if len(existing) > 1 else None)
    if resolved and cache_complete(files.cache):
        return resolved
    corpus_path, dictionary = check_cache_inputs(config)
    if ray is not None:
        from autointerp.distributed.caching import run_cache_shards

        sharded = run_cache_shards(files, config, ray, corpus_path, progress=progress)
        if sharded is not None:
            return sharded
    model, encoders, targets, rows = load_cache_inputs(config, corpus_path, dictionary)
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

    corpus_path, dictionary = check_cache_inputs(config)
    models = (open_models or open_cache_models)(config, dictionary)
    model, encoders, targets, rows = load_cache_inputs(
        config, corpus_path, dictionary, check_empty=first_row == 0, models=models
    )
    for _, _, meta in targets:
        meta.max_tokens = n_rows * config.cache.ctx_len
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


def check_cache_inputs(config: RunConfig) -> tuple[Path, Any]:
    """The corpus and the dictionaries (located, fetched if from the Hub), after checking what can fail
    before minutes of model loading and caching: a missing or binary corpus, a dictionary, hookpoint or
    revision not on the Hub, latent indices the dictionary does not have (its size is in the
    checkpoint's header)."""
    from autointerp.subjects.dictionaries import peek_num_latents

    corpus_path = resolve_corpus(config.corpus)
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
    return corpus_path, dictionary


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
    corpus_path: Path,
    dictionary: Any,
    *,
    check_empty: bool = True,
    models: tuple[Any, list[Any]] | None = None,
) -> tuple[torch.nn.Module, list[Any], list[tuple[Any, Any, CacheMeta]], Iterator[Any]]:
    """The subject model and dictionaries on `config.device` (`models`, already open, or opened now), each
    hookpoint's (hookpoint, encoder, meta), and the corpus rows."""
    subject, opened = models if models is not None else open_cache_models(config, dictionary)
    rows = corpus_rows(config, subject.tokenizer, corpus_path, check_empty=check_empty)
    s = config.cache
    targets = [
        (
            hookpoint,
            encoder,
            CacheMeta(
                model=subject.name,
                dictionary=encoder.name,
                hookpoint=hookpoint.name,
                corpus=str(corpus_path),
                num_latents=encoder.num_latents,
                ctx_len=s.ctx_len,
                window_len=s.window_len,
                top_k=s.top_k,
                sample_size=s.sample_size,
                seed=s.seed,
                max_tokens=config.n_tokens,
            ),
        )
        for encoder, hookpoint in opened
    ]
    return subject.model, [encoder for encoder, _ in opened], targets, rows


def corpus_rows(config: RunConfig, tokenizer: Any, corpus_path: Path, *, check_empty: bool = True) -> Iterator[Any]:
    """The corpus as rows of `ctx_len` tokens; a corpus too short for one row is an error (`check_empty`)."""

    def encode(docs: list[str]) -> list[list[int]]:
        return tokenizer(docs, add_special_tokens=False)["input_ids"]

    rows = iter_rows(
        iter_documents(corpus_path, config.text_column),
        encode,
        ctx_len=config.cache.ctx_len,
        separator=tokenizer.eos_token_id,
    )
    first = next(rows, None)
    if first is None:
        if check_empty:
            raise CorpusError(
                f"corpus {corpus_path} holds fewer than {config.cache.ctx_len} tokens of text: nothing to cache"
            )
        return iter(())

    def all_rows() -> Iterator[Any]:
        yield first
        yield from rows

    return all_rows()


def resolved_of(config: RunConfig, metas: list[CacheMeta], encoders: list[Any]) -> dict[str, Any]:
    """What config.json records of a run's cache: model, corpus and tokens, and each hookpoint's dictionary
    and size (`by_hookpoint`). A run of one hookpoint also has them at the top, as runs always had."""
    import os.path

    first = metas[0]
    by_hookpoint = {
        m.hookpoint: {
            "dictionary": m.dictionary,
            "num_latents": m.num_latents,
            "dictionary_format": e.format,
            "d_in": e.d_in,
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


def make_judge(name: str, config: RunConfig) -> Judge:
    """A judge by name: "openai:MODEL" over HTTP, "vllm:MODEL" in process by vLLM, else a local GGUF model.

    Layers, outside in: the response cache (a hit never waits for a slot), the ordering gate (bounded
    requests in flight, served by latent and stage so shared prefixes stay together), the backend.
    """
    if name.startswith("openai:"):
        from autointerp.llm.openai_compat import OpenAIJudge
        from autointerp.llm.spread import SpreadJudge, split_urls

        urls = split_urls(config.judge_url)
        slots = config.judge_concurrency or 8 * len(urls)  # 8 in flight per server
        servers: list[Judge] = [
            OpenAIJudge(
                name.removeprefix("openai:"),
                url,
                api_key_env=config.api_key_env,
                supports_logprobs=not config.no_logprobs,
                max_concurrency=slots,
                supports_prompt_logprobs=config.prompt_logprobs,
                timeout=config.judge_timeout,
            )
            for url in urls
        ]
        # several servers of one model (--judge-url A,B): each request to the least busy one
        judge: Judge = servers[0] if len(servers) == 1 else SpreadJudge(servers)
        where = ",".join(sorted(u or "https://api.openai.com/v1" for u in urls))
        namespace = f"openai:{where}:{judge.model}"
    elif name.startswith("vllm:"):
        from autointerp.llm.vllm_offline import load_vllm_judge

        slots = config.judge_concurrency or 128  # the engine batches whatever is in flight together
        judge = load_vllm_judge(name.removeprefix("vllm:"))
        namespace = name
    else:
        from autointerp.llm.local import load_local_judge

        slots = config.judge_concurrency or 1  # llama.cpp in process runs one request at a time anyway
        judge = load_local_judge(name)
        namespace = f"llama.cpp:{judge.model}"
    return wrap_judge(judge, config, namespace=namespace, slots=slots)


def wrap_judge(backend: Judge, config: RunConfig, *, namespace: str, slots: int) -> Judge:
    """A backend behind the ordering gate (`slots` requests in flight) and, unless the config turns it off,
    the response cache under `namespace` (which must name the backend and model: two never share answers).
    The HTTP service wraps the judges it is handed (scripted ones in tests, an instant one in the bench) the
    same way as the ones it loads by name."""
    from autointerp.llm.assets import default_cache_dir
    from autointerp.llm.ordering import OrderedJudge

    judge: Judge = OrderedJudge(backend, slots)
    if not config.response_cache:
        return judge
    from autointerp.llm.cache import CachedJudge

    path = config.response_cache_path or default_cache_dir() / "responses.sqlite"
    return CachedJudge(judge, path, namespace=namespace)


def steering_subject(config: RunConfig, meta: CacheMeta | None = None, hookpoint: str | None = None) -> SteeringSubject:
    """The subject model (on config.device) with the dictionary of a hookpoint (None: the run's only one),
    for the scorers that steer it; `meta` (that hookpoint's cache) pins Hub downloads to the commits the
    cache was built from."""
    return SteeringLoader(config)(hookpoint, meta)


class SteeringLoader:
    """The subject model, loaded once for steering, with each hookpoint's dictionary opened on first use."""

    def __init__(self, config: RunConfig, caches: HookpointCaches | None = None):
        self.config = config
        self.caches = caches
        self._subject: Any = None
        self._opened: dict[str | None, Any] = {}

    def __call__(self, hookpoint: str | None = None, meta: CacheMeta | None = None) -> SteeringSubject:
        from autointerp.scorers.intervention import SteeringSubject
        from autointerp.subjects.attach import open_dictionaries

        if meta is None and self.caches is not None:
            meta = self.caches.metas[hookpoint or self.caches.hookpoints[0]]
        if self._subject is None:
            self._subject = load_subject(self.config, meta)
            self._subject.model.to(self.config.device)
        if hookpoint not in self._opened:
            config = self.config
            dictionary = locate_dictionary(config, meta)
            if not isinstance(dictionary, str):  # open only the hookpoint's own, where the sources name it
                dictionary = [d for d in dictionary if d.hookpoint == hookpoint] or dictionary
            wanted = [hookpoint] if hookpoint and isinstance(dictionary, str) else config.requested_hookpoints
            opened = open_dictionaries(self._subject.model, dictionary, wanted, neurons_k=config.neurons_k)
            chosen = [(e, hp) for e, hp in opened if hookpoint is None or hp.name == hookpoint]
            if not chosen:
                raise ConfigError(f"no dictionary of this run reads hookpoint {hookpoint!r}")
            encoder, hp = chosen[0]
            encoder.to(config.device)
            self._opened[hookpoint] = SteeringSubject(
                model=self._subject.model, tokenizer=self._subject.tokenizer, encoder=encoder, hookpoint=hp
            )
        return self._opened[hookpoint]


def embedders(config: RunConfig) -> Callable[[str], Embedder]:
    """Embedders by model name, one instance per name for the run: the sampler's `similar` negatives
    and the embedding scorer share a model (loaded once, on first use) and its per-text cache."""
    from autointerp.embeddings import load_embedder

    made: dict[str, Embedder] = {}

    def get(name: str) -> Embedder:
        if name not in made:
            made[name] = load_embedder(name, device=config.device)
        return made[name]

    return get


def scorer_context(
    config: RunConfig,
    cache: ActivationCache | HookpointCaches | None = None,
    embedder: Callable[[str], Embedder] | None = None,
) -> ScorerContext:
    """What the run's scorers share: the activation cache (of each hookpoint), the embedders (by name;
    shared with the sampler's similar negatives) and the subject model for steering (loaded on first use)."""
    if isinstance(cache, HookpointCaches) and len(cache) == 1:
        cache = cache.open(cache.hookpoints[0])
    if isinstance(cache, HookpointCaches):
        loader = SteeringLoader(config, cache)
        return ScorerContext(
            embedder=embedder or embedders(config),
            steering_subject=loader,
            caches=cache.open,
            hookpoints=cache.hookpoints,
        )
    single = SteeringLoader(config)
    meta = cache.meta if cache is not None else None

    def steering(hookpoint: str | None = None) -> Any:
        return single(hookpoint, meta)

    return ScorerContext(cache=cache, embedder=embedder or embedders(config), steering_subject=steering)


def make_scorers(
    config: RunConfig,
    names: list[str] | None = None,
    cache: ActivationCache | None = None,
    *,
    embedder: Callable[[str], Embedder] | None = None,
) -> list[Scorer]:
    """The scorers named (default: the config's), built with the run's settings."""
    return build_scorers(config.scorers if names is None else names, config, scorer_context(config, cache, embedder))


class LazySamplers(Mapping[str, Sampler]):
    """A run's samplers by hookpoint, each made on first use (its cache's summaries load then)."""

    def __init__(self, hookpoints: list[str], make: Callable[[str], Sampler]):
        self._hookpoints = hookpoints
        self._make = make
        self._made: dict[str, Sampler] = {}

    def __getitem__(self, hookpoint: str) -> Sampler:
        if hookpoint not in self._hookpoints:
            raise KeyError(hookpoint)
        if hookpoint not in self._made:
            self._made[hookpoint] = self._make(hookpoint)
        return self._made[hookpoint]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hookpoints)

    def __len__(self) -> int:
        return len(self._hookpoints)


class OpenRun:
    """A run folder's heavy parts, loaded once: the activation caches, the samplers (the subject model's
    tokenizer, and the same held-out split as every stage), and the scorers with their shared context.

    The CLI opens one per command; a long-lived process (the HTTP service) keeps one per run folder and
    asks it about many latents, so the tokenizer, the caches and the scorers' models are loaded once.
    Each hookpoint's cache and sampler are opened when one of its latents is first asked for.
    """

    def __init__(self, files: RunFiles, config: RunConfig, *, cache: ActivationCache | HookpointCaches | None = None):
        self.files = files
        self.config = config
        if cache is None:
            cache = HookpointCaches(files.cache)
        self.caches = cache if isinstance(cache, HookpointCaches) else HookpointCaches.of(cache)
        self.hookpoints = self.caches.hookpoints
        self.embedder = embedders(config)
        similar = self.embedder(config.sampling.similar_model) if config.sampling.negatives == "similar" else None
        self.decode = token_decoder(load_tokenizer(config, self.caches.metas[self.hookpoints[0]]))
        self.samplers = LazySamplers(
            self.hookpoints,
            lambda hp: Sampler(self.caches.open(hp), self.decode, config.sampling, embedder=similar),
        )
        self.context = scorer_context(config, self.caches, self.embedder)
        self._scorers: dict[str, Scorer] = {}

    @property
    def cache(self) -> ActivationCache:
        """The cache of a run of one hookpoint."""
        return self.caches.open(self._only())

    @property
    def sampler(self) -> Sampler:
        """The sampler of a run of one hookpoint."""
        return self.samplers[self._only()]

    def _only(self) -> str:
        if len(self.hookpoints) != 1:
            raise ConfigError(f"this run has several hookpoints ({', '.join(self.hookpoints)}): name one")
        return self.hookpoints[0]

    def unit(self, latent: int | LatentId, hookpoint: str | None = None) -> LatentId:
        """A latent of this run as (hookpoint, index); `hookpoint` None: the run's only one."""
        if isinstance(latent, LatentId):
            return latent
        return LatentId(hookpoint if hookpoint is not None else self._only(), int(latent))

    def scorers(self, names: Iterable[str]) -> list[Scorer]:
        """The named scorers, each built once for the run, all sharing its context."""
        names = list(names)
        for name in names:
            if name not in self._scorers:
                (self._scorers[name],) = build_scorers([name], self.config, self.context)
        return [self._scorers[name] for name in names]

    def chooser(self) -> Scorer | None:
        """The scorer that rates best-of-n labels, when the run's explainer draws several."""
        return self.scorers([self.config.explain.best_of_scorer])[0] if self.config.explain.best_of > 1 else None


async def score_label(
    run: OpenRun, latent: int | LatentId, text: str, scorers: list[str], judge: Judge | None
) -> list[ScoreRow]:
    """Score `text` as an explanation of one latent of the run with each named scorer, on the run's held-out
    split, and write the rows to its scores log: the same rows `autointerp score` writes for that label
    (in a thread: callers are long-lived processes with other work on their event loop)."""
    chosen = run.scorers(scorers)
    for scorer in chosen:
        scorer.check_judge(judge)
    worker = LatentWorker(
        run.files, run.config, run.samplers, None, judge, chosen, {"score"}, RunSummary(), write_in_thread=True
    )
    return await worker.score_text(run.unit(latent), text)


async def explain_latent(
    run: OpenRun, latent: int | LatentId, explainer: Judge | None, judge: Judge | None
) -> ExplanationRow:
    """Explain one latent of the run now (`explainer` None: the tokens explainer, no LLM; `judge` rates
    best-of-n candidates, when the run draws several) and write its row, which becomes the latent's current
    explanation, as `autointerp explain` would."""
    config = run.config
    if (explainer is None) != (config.explainer_model == TOKENS_EXPLAINER):
        config = replace(config, explainer=TOKENS_EXPLAINER if explainer is None else explainer.model)
    chooser = run.chooser() if explainer is not None else None
    if chooser is not None:
        chooser.check_judge(judge)
    worker = LatentWorker(
        run.files, config, run.samplers, explainer, judge, [], {"explain"}, RunSummary(), chooser, write_in_thread=True
    )
    return await worker.explain_latent(run.unit(latent))


def write_results(files: RunFiles, config: RunConfig, resolved: dict[str, Any]) -> pd.DataFrame:
    """Rebuild results.parquet and judgments.parquet from the logs: the config's scorers' columns first, then
    those of any other scorer the log holds (one asked for through the HTTP service, say)."""
    return materialize(
        files,
        {k: resolved.get(k) for k in ("model", "dictionary", "hookpoint")},
        config.scorers,
        dictionaries=run_dictionaries(resolved),
    )


def rare_note(caches: HookpointCaches, n_rare: int, config: RunConfig) -> str:
    """The summary's line on latents too rare to explain (a distributed run's driver says it too)."""
    total = sum(caches.num_latents(hp) for hp in caches)
    at = f" (over {len(caches)} hookpoints)" if len(caches) > 1 else ""
    return (
        f"{n_rare} of {total} latents{at} fire in fewer than {config.sampling.min_examples} windows "
        "and are not eligible"
    )


async def latent_stages(
    files: RunFiles,
    config: RunConfig,
    stages: set[str],
    *,
    progress: bool = True,
    judges: dict[str, Judge] | None = None,
    ready: Callable[[], RunConfig | tuple[RunConfig, list[LatentId]]] | None = None,
    on_done: Callable[[LatentId], None] | None = None,
) -> RunSummary:
    """Explain and/or score the selected latents; `judges` (by name) overrides model loading in tests.

    Every judge is made and checked (reachable, able to do what each scorer needs) before any latent
    is touched; then `ready()`, when given, is called and returns the config whose latents to do, or the
    config and the very (hookpoint, latent) pairs to do (the API imports explanations there and records
    the stage's validated options; a shard of a distributed run names its share of the run's pairs).

    The stage "controls" alone runs only the shuffled-label control pass (a distributed run does it once
    every shard's labels are in, since donors are drawn from every labelled latent); "score" runs it
    after scoring, as a single run does. `on_done((hookpoint, latent))` is called as each latent of a
    pass ends.
    """
    config.validate()
    caches = HookpointCaches(files.cache)
    for hookpoint in caches:
        check_latents(config, caches.num_latents(hookpoint), hookpoint if len(caches) > 1 else None)
    run = OpenRun(files, config, cache=caches)
    scorers = run.scorers(config.scorers)
    loaded: dict[str, Judge] = dict(judges or {})

    def judge(name: str) -> Judge:
        if name not in loaded:
            loaded[name] = make_judge(name, config)
        return loaded[name]

    by_llm = "explain" in stages and config.explainer_model != TOKENS_EXPLAINER  # tokens: no model at all
    explainer = judge(config.explainer_model) if by_llm else None
    chooser = run.chooser() if "explain" in stages else None
    scoring = "score" in stages or "controls" in stages
    asking = (scorers if scoring else []) + ([chooser] if chooser else [])
    scorer_judge = judge(config.judge) if any(s.needs_judge for s in asking) else None
    summary = RunSummary()
    try:
        # a judge that cannot do what a scorer needs, or cannot be reached, fails here, not on every latent
        for scorer in asking:
            scorer.check_judge(scorer_judge)
        for used in {id(j): j for j in (explainer, scorer_judge) if j is not None}.values():
            await check_judge_ready(used)
        chosen: list[LatentId] | None = None
        if ready is not None:
            got = ready()
            config, chosen = got if isinstance(got, tuple) else (got, None)
        latents, n_rare = select_units(caches, config)
        if chosen is not None:
            latents = chosen
        if n_rare:
            summary.messages.append(rare_note(caches, n_rare, config))
        worker = LatentWorker(
            files, config, run.samplers, explainer, scorer_judge, scorers, stages, summary, chooser=chooser
        )
        if "explain" in stages or "score" in stages:
            await process_latents(latents, worker, concurrency=config.concurrency, progress=progress, on_done=on_done)
        if scoring and config.controls == "shuffled":
            await run_controls(
                latents,
                worker,
                seed=config.sampling.seed,
                concurrency=config.concurrency,
                progress=progress,
                on_done=on_done,
            )
        return summary
    finally:
        for name, j in loaded.items():
            if hasattr(j, "summary"):
                summary.messages.append(f"{name}: {j.summary()}")
            if judges is None or j not in judges.values():
                await j.aclose()
