"""Turning the activation cache into `LatentRecord`s: what the explainer sees and what it is tested on.

The held-out (test) examples are drawn first and everything shown to the explainer is drawn from
what is left, so no window is ever on both sides: delphi draws both sides from the same pool with
the same seed and leaks 10-20 of its 50 test examples into the explainer prompt. Every draw uses a
generator seeded by (seed, latent), so a latent's record does not depend on which other latents
were processed, or in what order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from autointerp.cache.store import ActivationCache
from autointerp.records import Example, LatentId, LatentRecord

TokenDecoder = Callable[[Sequence[int]], list[str]]


@dataclass
class SamplingSettings:
    n_train: int = 40  # activating examples shown to the explainer
    n_test: int = 50  # held-out activating examples for scorers
    n_negatives: int = 50  # held-out non-activating examples for scorers
    n_train_negatives: int = 20  # non-activating examples a contrastive explainer may see
    n_validation: int = 20  # activating (and as many silent) examples to choose among explanations (best-of-n)
    n_quantiles: int = 10
    train_type: Literal["quantiles", "top"] = "quantiles"
    min_examples: int = 20  # latents firing in fewer windows are skipped
    seed: int = 0


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


class Sampler:
    def __init__(self, cache: ActivationCache, decode: TokenDecoder, settings: SamplingSettings):
        self.cache = cache
        self.decode = decode
        self.settings = settings

    def example(self, window: int, latent: int, quantile: int = -1) -> Example:
        tokens = self.cache.window_tokens(window).tolist()
        acts = self.cache.window_activations(window, latent)
        return Example(window=window, tokens=tokens, str_tokens=self.decode(tokens),
                       activations=[round(float(a), 4) for a in acts], quantile=quantile)

    def record(self, latent: int) -> LatentRecord:
        s = self.settings
        cache = self.cache
        stats = cache.stats(latent)
        lid = LatentId(cache.meta.hookpoint, latent)
        if stats.fire_windows < s.min_examples:
            raise NotEnoughExamples(f"latent {latent} fires in {stats.fire_windows} windows, fewer than "
                                    f"min_examples={s.min_examples}")
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
        n_neg = s.n_negatives + s.n_train_negatives
        negatives = self._negatives(latent, n_neg + len(validation), used, rng)
        return LatentRecord(
            latent=lid,
            stats=stats,
            train=[self.example(w, latent, quantile(w)) for w in train],
            test=[self.example(w, latent, bin_of[w]) for w in test],
            negatives=[self.example(w, latent) for w in negatives[: s.n_negatives]],
            train_negatives=[self.example(w, latent) for w in negatives[s.n_negatives : n_neg]],
            validation=[self.example(w, latent, bin_of[w]) for w in validation],
            validation_negatives=[self.example(w, latent) for w in negatives[n_neg:]],
        )

    def _negatives(self, latent: int, n: int, exclude: set[int], rng: np.random.Generator) -> list[int]:
        """Random windows where the latent is silent on every token."""
        n_windows = self.cache.meta.n_windows
        found: list[int] = []
        seen = set(exclude)
        for _ in range(20 * n + 100):
            if len(found) == n or len(seen) >= n_windows:
                break
            w = int(rng.integers(n_windows))
            if w in seen:
                continue
            seen.add(w)
            if not self.cache.fires_in(w, latent):
                found.append(w)
        return found


DOCUMENT_BREAK = " ¶ "


def token_decoder(tokenizer) -> TokenDecoder:
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
