"""A run folder opened for its latents: caches, samplers, and scorers with the context they share.

The CLI's latent stages open one per command; the HTTP service keeps one per run folder and asks it
about many latents, so its heavy parts (tokenizer, caches, scorers' models) load once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from autointerp.cache.store import ActivationCache, CacheMeta, HookpointCaches
from autointerp.config import ConfigError, RunConfig
from autointerp.embeddings import Embedder
from autointerp.records import LatentId
from autointerp.results import RunFiles
from autointerp.sampling import Sampler, token_decoder
from autointerp.scorers.base import Scorer, ScorerContext
from autointerp.scorers.registry import build_scorers
from autointerp.stages.subject_loading import load_subject, load_tokenizer, locate_dictionary

if TYPE_CHECKING:
    from autointerp.scorers.intervention import SteeringSubject


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
