"""Wiring: turn a `RunConfig` into loaded models, judges and scorers, and run the stages on a folder.

This is the one place that knows how the pieces are built from names; the pieces themselves take
ready objects, which is what lets tests hand them scripted judges and tiny caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from autointerp.cache.build import build_cache
from autointerp.cache.store import ActivationCache, CacheMeta
from autointerp.config import ConfigError, RunConfig
from autointerp.corpus import CorpusError, iter_documents, iter_rows, resolve_corpus
from autointerp.embeddings import Embedder
from autointerp.explainers import TOKENS_EXPLAINER
from autointerp.llm.base import Judge, check_judge_ready
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, run_controls, select_latents
from autointerp.records import ExplanationRow, ScoreRow
from autointerp.results import RunFiles, materialize
from autointerp.sampling import Sampler, token_decoder
from autointerp.scorers.base import Scorer, ScorerContext
from autointerp.scorers.registry import build_scorers


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


def load_subject(config: RunConfig, meta: CacheMeta | None = None):
    from autointerp.subjects.model import load_subject as _load

    return _load(_model_arg(config), revision=_revisions(config, meta)[0], dtype=getattr(torch, config.dtype))


def load_tokenizer(config: RunConfig, meta: CacheMeta | None = None):
    from autointerp.subjects.model import load_tokenizer as _load

    return _load(_model_arg(config), revision=_revisions(config, meta)[0])


def locate_dictionary(config: RunConfig, meta: CacheMeta | None = None):
    """The run's dictionary, fetched if it comes from the Hub: a `DictionarySource`, or the name of a
    built-in one ("default", "neurons")."""
    from autointerp.subjects.sources import locate_dictionary as _locate

    if config.dictionary in ("default", "neurons"):
        if config.dictionary_revision is not None:
            raise ConfigError(f"--dictionary-revision is for Hub dictionaries, not --dictionary {config.dictionary}")
        return config.dictionary
    hookpoints = [config.hookpoint] if config.hookpoint else None
    (source,) = _locate(config.dictionary, hookpoints, _revisions(config, meta)[1])
    return source


def cache_stage(
    files: RunFiles, config: RunConfig, *, progress: bool = True, resolved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build (or finish) the activation cache; returns what was resolved (names, sizes) for config.json.

    A folder whose cache is complete returns its stored `resolved` at once: the config merge has
    already checked that the options agree, so the model need not be loaded again to resume.
    """
    from autointerp.cache.store import read_meta
    from autointerp.subjects.attach import open_dictionary
    from autointerp.subjects.dictionaries import peek_num_latents

    config.validate()
    existing = read_meta(files.cache)
    if existing is not None:
        check_latents(config, existing.num_latents)
    if resolved and existing is not None and existing.complete:
        return resolved

    # what can fail fails before minutes of model loading and caching: a missing or binary corpus, a
    # dictionary, hookpoint or revision not on the Hub, latent indices the dictionary does not have (its
    # size is in the checkpoint's header)
    corpus_path = resolve_corpus(config.corpus)
    dictionary = locate_dictionary(config)
    if isinstance(dictionary, str):
        size = peek_num_latents(dictionary, config.hookpoint)
    else:
        size = peek_num_latents(dictionary.path, dictionary.hookpoint)
    if size is not None:
        check_latents(config, size)
    subject = load_subject(config)
    subject.model.to(config.device)
    encoder, hookpoint = open_dictionary(subject.model, dictionary, config.hookpoint, neurons_k=config.neurons_k)
    check_latents(config, encoder.num_latents)
    encoder.to(config.device)
    tokenizer = subject.tokenizer

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
        raise CorpusError(
            f"corpus {corpus_path} holds fewer than {config.cache.ctx_len} tokens of text: nothing to cache"
        )

    def all_rows():
        yield first
        yield from rows

    s = config.cache
    meta = CacheMeta(
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
    )
    meta = build_cache(
        files.cache,
        all_rows(),
        model=subject.model,
        hookpoint=hookpoint,
        encoder=encoder,
        meta=meta,
        settings=s,
        device=config.device,
        progress=progress,
    )
    return {
        "model": meta.model,
        "dictionary": meta.dictionary,
        "hookpoint": meta.hookpoint,
        "corpus": meta.corpus,
        "num_latents": meta.num_latents,
        "n_tokens": meta.n_tokens,
        "dictionary_format": encoder.format,
        "d_in": encoder.d_in,
    }


def check_latents(config: RunConfig, num_latents: int) -> None:
    """Latent indices asked for (`--latents`) must exist in the dictionary."""
    bad = [i for i in config.latents or [] if not 0 <= i < num_latents]
    if bad:
        raise ConfigError(
            f"--latents {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''} out of range: "
            f"the dictionary has {num_latents:,} latents (0..{num_latents - 1})"
        )


def make_judge(name: str, config: RunConfig) -> Judge:
    """A judge by name: "openai:MODEL" over HTTP, "vllm:MODEL" in process by vLLM, else a local GGUF model.

    Layers, outside in: the response cache (a hit never waits for a slot), the ordering gate (bounded
    requests in flight, served by latent and stage so shared prefixes stay together), the backend.
    """
    if name.startswith("openai:"):
        from autointerp.llm.openai_compat import OpenAIJudge

        slots = config.judge_concurrency or 8
        judge: Judge = OpenAIJudge(
            name.removeprefix("openai:"),
            config.judge_url,
            api_key_env=config.api_key_env,
            supports_logprobs=not config.no_logprobs,
            max_concurrency=slots,
            supports_prompt_logprobs=config.prompt_logprobs,
            timeout=config.judge_timeout,
        )
        namespace = f"openai:{config.judge_url or 'https://api.openai.com/v1'}:{judge.model}"
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


def steering_subject(config: RunConfig, meta: CacheMeta | None = None):
    """The subject model (on config.device) with its dictionary, for the scorers that steer it; `meta`
    (the run's cache) pins Hub downloads to the commits the cache was built from."""
    from autointerp.scorers.intervention import SteeringSubject
    from autointerp.subjects.attach import open_dictionary

    subject = load_subject(config, meta)
    subject.model.to(config.device)
    dictionary = locate_dictionary(config, meta)
    encoder, hookpoint = open_dictionary(subject.model, dictionary, config.hookpoint, neurons_k=config.neurons_k)
    encoder.to(config.device)
    return SteeringSubject(model=subject.model, tokenizer=subject.tokenizer, encoder=encoder, hookpoint=hookpoint)


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
    config: RunConfig, cache: ActivationCache | None = None, embedder: Callable[[str], Embedder] | None = None
) -> ScorerContext:
    """What the run's scorers share: the activation cache, the embedders (by name; shared with the
    sampler's similar negatives) and the subject model for steering (loaded on first use)."""
    return ScorerContext(
        cache=cache,
        embedder=embedder or embedders(config),
        steering_subject=lambda: steering_subject(config, cache.meta if cache is not None else None),
    )


def make_scorers(
    config: RunConfig,
    names: list[str] | None = None,
    cache: ActivationCache | None = None,
    *,
    embedder: Callable[[str], Embedder] | None = None,
) -> list[Scorer]:
    """The scorers named (default: the config's), built with the run's settings."""
    return build_scorers(config.scorers if names is None else names, config, scorer_context(config, cache, embedder))


class OpenRun:
    """A run folder's heavy parts, loaded once: the activation cache, the sampler (the subject model's
    tokenizer, and the same held-out split as every stage), and the scorers with their shared context.

    The CLI opens one per command; a long-lived process (the HTTP service) keeps one per run folder and
    asks it about many latents, so the tokenizer, the cache and the scorers' models are loaded once.
    """

    def __init__(self, files: RunFiles, config: RunConfig, *, cache: ActivationCache | None = None):
        self.files = files
        self.config = config
        self.cache = cache or ActivationCache(files.cache)
        self.embedder = embedders(config)
        similar = self.embedder(config.sampling.similar_model) if config.sampling.negatives == "similar" else None
        decode = token_decoder(load_tokenizer(config, self.cache.meta))
        self.sampler = Sampler(self.cache, decode, config.sampling, embedder=similar)
        self.context = scorer_context(config, self.cache, self.embedder)
        self._scorers: dict[str, Scorer] = {}

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


async def score_label(run: OpenRun, latent: int, text: str, scorers: list[str], judge: Judge | None) -> list[ScoreRow]:
    """Score `text` as an explanation of one latent of the run with each named scorer, on the run's held-out
    split, and write the rows to its scores log: the same rows `autointerp score` writes for that label
    (in a thread: callers are long-lived processes with other work on their event loop)."""
    chosen = run.scorers(scorers)
    for scorer in chosen:
        scorer.check_judge(judge)
    worker = LatentWorker(
        run.files, run.config, run.sampler, None, judge, chosen, {"score"}, RunSummary(), write_in_thread=True
    )
    return await worker.score_text(latent, text)


async def explain_latent(run: OpenRun, latent: int, explainer: Judge | None, judge: Judge | None) -> ExplanationRow:
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
        run.files, config, run.sampler, explainer, judge, [], {"explain"}, RunSummary(), chooser, write_in_thread=True
    )
    return await worker.explain_latent(latent)


def write_results(files: RunFiles, config: RunConfig, resolved: dict[str, Any]):
    """Rebuild results.parquet and judgments.parquet from the logs: the config's scorers' columns first, then
    those of any other scorer the log holds (one asked for through the HTTP service, say)."""
    return materialize(files, {k: resolved.get(k) for k in ("model", "dictionary", "hookpoint")}, config.scorers)


async def latent_stages(
    files: RunFiles,
    config: RunConfig,
    stages: set[str],
    *,
    progress: bool = True,
    judges: dict[str, Judge] | None = None,
    ready: Callable[[], RunConfig] | None = None,
) -> RunSummary:
    """Explain and/or score the selected latents; `judges` (by name) overrides model loading in tests.

    Every judge is made and checked (reachable, able to do what each scorer needs) before any latent
    is touched; then `ready()`, when given, is called and returns the config whose latents to do (the
    API imports explanations there and records the stage's validated options).
    """
    config.validate()
    cache = ActivationCache(files.cache)
    check_latents(config, cache.num_latents)
    run = OpenRun(files, config, cache=cache)
    scorers = run.scorers(config.scorers)
    loaded: dict[str, Judge] = dict(judges or {})

    def judge(name: str) -> Judge:
        if name not in loaded:
            loaded[name] = make_judge(name, config)
        return loaded[name]

    by_llm = "explain" in stages and config.explainer_model != TOKENS_EXPLAINER  # tokens: no model at all
    explainer = judge(config.explainer_model) if by_llm else None
    chooser = run.chooser() if "explain" in stages else None
    asking = (scorers if "score" in stages else []) + ([chooser] if chooser else [])
    scorer_judge = judge(config.judge) if any(s.needs_judge for s in asking) else None
    summary = RunSummary()
    try:
        # a judge that cannot do what a scorer needs, or cannot be reached, fails here, not on every latent
        for scorer in asking:
            scorer.check_judge(scorer_judge)
        for used in {id(j): j for j in (explainer, scorer_judge) if j is not None}.values():
            await check_judge_ready(used)
        if ready is not None:
            config = ready()
        latents, n_rare = select_latents(run.cache, config)
        if n_rare:
            summary.messages.append(
                f"{n_rare} of {run.cache.num_latents} latents fire in fewer than "
                f"{config.sampling.min_examples} windows and are not eligible"
            )
        worker = LatentWorker(
            files, config, run.sampler, explainer, scorer_judge, scorers, stages, summary, chooser=chooser
        )
        await process_latents(latents, worker, concurrency=config.concurrency, progress=progress)
        if "score" in stages and config.controls == "shuffled":
            await run_controls(
                latents, worker, seed=config.sampling.seed, concurrency=config.concurrency, progress=progress
            )
        return summary
    finally:
        for name, j in loaded.items():
            if hasattr(j, "summary"):
                summary.messages.append(f"{name}: {j.summary()}")
            if judges is None or j not in judges.values():
                await j.aclose()
