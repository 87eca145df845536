"""Turning the activation cache into `LatentRecord`s: what the explainer sees and what it is tested on.

The held-out (test) examples are drawn first and everything shown to the explainer is drawn from
what is left, so no window is ever on both sides: delphi draws both sides from the same pool with
the same seed and leaks 10-20 of its 50 test examples into the explainer prompt. Every draw uses a
generator seeded by (seed, latent), so a latent's record does not depend on which other latents
were processed, or in what order.

Negatives are random silent windows by default; `negatives="similar"` or `"cooccurring"` picks
hard ones (see negatives.py). Whatever the kind, every negative is silent for the latent on every
token, and no window serves two splits (test, train, validation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from autointerp.cache.store import ActivationCache
from autointerp.embeddings import Embedder
from autointerp.negatives import CandidatePool, cooccurring_latents, negative_groups, rank_cooccurring, rank_similar
from autointerp.records import Example, LatentId, LatentRecord
from autointerp.settings import NEGATIVE_KINDS, SamplingSettings

TokenDecoder = Callable[[Sequence[int]], list[str]]


class NotEnoughExamples(ValueError):
    """The latent fires too rarely (or too often) to build a fair record; the message says which."""


def quantile_bins(windows: np.ndarray, maxima: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Split windows into `n_bins` equal-count bins by max activation, weakest bin first."""
    order = np.argsort(maxima, kind="stable")
    return [windows[b] for b in np.array_split(order, min(n_bins, len(order))) if len(b)]


def stratified_pick(bins: list[np.ndarray], n: int, rng: np.random.Generator) -> list[int]:
    """Take `n` windows spread evenly over the bins (round robin over shuffled bins)."""
    shuffled = [list(rng.permutation(b)) for b in bins]
    picked: list[int] = []
    while len(picked) < n and any(shuffled):
        for b in shuffled:
            if b and len(picked) < n:
                picked.append(int(b.pop()))
    return picked


def read_example(cache: ActivationCache, decode: TokenDecoder, window: int, latent: int, quantile: int = -1) -> Example:
    """One cached window with the latent's activation on each of its tokens."""
    tokens = cache.window_tokens(window).tolist()
    acts = cache.window_activations(window, latent)
    return Example(
        window=window,
        tokens=tokens,
        str_tokens=decode(tokens),
        activations=[round(float(a), 4) for a in acts],
        quantile=quantile,
    )


class Sampler:
    """Builds `LatentRecord`s from a cache. `embedder` is needed only to draw `negatives="similar"`;
    it is passed in (never loaded here) so tests can hand in a fake one."""

    def __init__(
        self, cache: ActivationCache, decode: TokenDecoder, settings: SamplingSettings, embedder: Embedder | None = None
    ):
        if settings.negatives not in NEGATIVE_KINDS:
            raise ValueError(f"unknown negatives kind {settings.negatives!r}; valid: {', '.join(NEGATIVE_KINDS)}")
        self.cache = cache
        self.decode = decode
        self.settings = settings
        self.pool: CandidatePool | None = None
        if settings.negatives == "similar" and embedder is not None:
            self.pool = CandidatePool(cache, self.texts, embedder, settings.similar_pool, settings.seed)

    def texts(self, windows: Iterable[int]) -> list[str]:
        """The windows' text exactly as `Example.text` gives it (so embeddings are shared with scorers)."""
        return ["".join(self.decode(self.cache.window_tokens(int(w)).tolist())) for w in windows]

    def example(self, window: int, latent: int, quantile: int = -1) -> Example:
        return read_example(self.cache, self.decode, window, latent, quantile)

    def record(self, latent: int, *, negatives: bool = True) -> LatentRecord:
        """The latent's record; `negatives=False` leaves the silent examples out (the activating ones
        are drawn first and come out the same), for readers that need no negatives and no embedder."""
        s = self.settings
        cache = self.cache
        stats = cache.stats(latent)
        lid = LatentId(cache.meta.hookpoint, latent)
        if stats.fire_windows < s.min_examples:
            raise NotEnoughExamples(
                f"latent {latent} fires in {stats.fire_windows} windows, fewer than min_examples={s.min_examples}"
            )
        rng = np.random.default_rng([s.seed, latent])

        pool = cache.sampled_windows(latent)
        maxima = np.array([cache.window_activations(int(w), latent).max() for w in pool])
        bins = quantile_bins(pool, maxima, s.n_quantiles)
        bin_of = {int(w): b for b, ws in enumerate(bins) for w in ws}
        edges = [float(maxima[np.isin(pool, ws)].min()) for ws in bins]

        # Test first, from at most half of the pool, so the explainer always keeps examples.
        n_test = min(s.n_test, len(pool) // 2)
        test = stratified_pick(bins, n_test, rng)
        held_out = set(test)
        if s.train_type == "top":
            top, _ = cache.top_windows(latent)
            train = [int(w) for w in top if int(w) not in held_out][: s.n_train]
        else:
            rest = [ws[~np.isin(ws, test)] for ws in bins]
            train = stratified_pick(rest, s.n_train, rng)

        def quantile(w: int) -> int:
            if w in bin_of:
                return bin_of[w]
            m = cache.window_activations(w, latent).max()
            return int(np.searchsorted(edges, m, side="right") - 1)

        # Validation from what neither side took (so it never shrinks the explainer's examples).
        taken = held_out | set(train)
        rest = [ws[~np.isin(ws, list(taken))] for ws in bins]
        validation = stratified_pick(rest, s.n_validation, rng)

        used = taken | set(validation)
        train_examples = [self.example(w, latent, quantile(w)) for w in train]
        test_examples = [self.example(w, latent, bin_of[w]) for w in test]
        validation_examples = [self.example(w, latent, bin_of[w]) for w in validation]
        sizes = (s.n_negatives, s.n_train_negatives, len(validation))  # test, train, validation
        if not negatives:
            held, shown, checking = [], [], []
        elif s.negatives == "random":
            found = list(islice(self._silent(latent, used, rng, sum(sizes)), sum(sizes)))
            cuts = np.cumsum(sizes)[:-1]
            held, shown, checking = (found[i:j] for i, j in zip([0, *cuts], [*cuts, None], strict=True))
        else:
            held, shown, checking = self._hard_negatives(
                latent, used, train_examples + test_examples + validation_examples, sizes, rng
            )
        return LatentRecord(
            latent=lid,
            stats=stats,
            train=train_examples,
            test=test_examples,
            negatives=[self.example(w, latent) for w in held],
            train_negatives=[self.example(w, latent) for w in shown],
            validation=validation_examples,
            validation_negatives=[self.example(w, latent) for w in checking],
        )

    def _silent(self, latent: int, exclude: set[int], rng: np.random.Generator, n: int) -> Iterator[int]:
        """Random windows where the latent is silent on every token, within 20n+100 draws."""
        n_windows = self.cache.meta.n_windows
        seen = set(exclude)
        for _ in range(20 * n + 100):
            if len(seen) >= n_windows:
                return
            w = int(rng.integers(n_windows))
            if w in seen:
                continue
            seen.add(w)
            if not self.cache.fires_in(w, latent):
                yield w

    def _ranked(self, latent: int, activating: list[Example]) -> Iterable[int]:
        if self.settings.negatives == "similar":
            if self.pool is None:
                raise ValueError("negatives='similar' ranks windows by embedding: give the Sampler an embedder")
            return rank_similar(self.pool, [e.text for e in activating])
        return rank_cooccurring(self.cache, cooccurring_latents(self.cache, latent, self.settings.n_cooccurring))

    def _hard_negatives(
        self,
        latent: int,
        exclude: set[int],
        activating: list[Example],
        sizes: tuple[int, ...],
        rng: np.random.Generator,
    ) -> list[list[int]]:
        """Negatives for each split (test, train, validation: `sizes` of each) from the ranked
        candidates, each window in its fixed group; random silent windows fill whatever the candidates
        could not (a small pool, few co-firing latents). Each group is shuffled, so the test group does
        not get all of the hardest."""
        s = self.settings
        picked: list[list[int]] = [[] for _ in sizes]
        seen = set(exclude)

        def take(windows: Iterable[int]) -> None:
            for w in windows:
                if all(len(p) >= n for p, n in zip(picked, sizes, strict=True)):
                    return
                if w in seen:
                    continue
                seen.add(w)
                group = int(negative_groups([w], s.seed, latent, sizes)[0])
                if len(picked[group]) < sizes[group] and not self.cache.fires_in(w, latent):
                    picked[group].append(w)

        take(self._ranked(latent, activating))
        missing = sum(sizes) - sum(len(p) for p in picked)
        if missing:
            take(self._silent(latent, set(seen), rng, 4 * missing))
        return [[int(w) for w in rng.permutation(p)] for p in picked]


DOCUMENT_BREAK = " ¶ "


def token_decoder(tokenizer: Any) -> TokenDecoder:
    """Per-token display strings (spaces and newlines as they appear in text), memoised per id.

    Special tokens (the separator between concatenated documents) show as a paragraph mark, not
    as chat-template markup like `<|im_end|>` that a judge might take for an instruction.
    """
    memo: dict[int, str] = {i: DOCUMENT_BREAK for i in getattr(tokenizer, "all_special_ids", [])}

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if i not in memo:
                memo[i] = tokenizer.decode([i])
            out.append(memo[i])
        return out

    return decode
