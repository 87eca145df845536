"""Hard negatives: silent windows chosen to be hard to tell from a latent's activating ones.

Random silent windows are easy: a label that merely names the corpus's topic already separates
them. Two harder kinds rank candidate windows, best first; the sampler then keeps the silent ones:

- `similar`: windows whose sentence embedding is closest to one of the latent's activating
  examples (the maximum cosine over them, so a latent with two distinct contexts gets negatives
  near each). Candidates are a pool of random windows drawn once per run (from the seed alone) and
  embedded once, so every latent shares that cost. The search is an exact matrix product: a pool of
  a few hundred to a few thousand 384-dimensional vectors against ~100 examples is a fraction of a
  millisecond of arithmetic, so an approximate index (FAISS) would add a dependency, an index build
  and non-exact answers for no gain; it would pay off only for pools of millions of windows.
- `cooccurring`: the strongest windows of the latents that fire on the same tokens as this one,
  where this one is silent: contexts that look like this latent's to the model itself.

Which split (held-out test, the explainer's train, or validation) a candidate window may serve is
decided by a hash of (seed, latent, window) *before* any ranking, so disjointness does not hinge on
the ranking being bit-for-bit the same on every run (embeddings can differ in the last bits between
batchings or machines): a re-ranked run may pick other negatives, never move a window to another
split. The price: a latent silent in only a few dozen windows may get fewer negatives in a split.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from autointerp.cache.store import ActivationCache
from autointerp.embeddings import Embedder

_SIDE_TAG = 0x51DE  # seed-stream tags; non-zero last words, since numpy seeds [a, b] and [a, b, 0] alike
_POOL_TAG = 0x9001


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each element."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def negative_groups(windows: Sequence[int] | np.ndarray, seed: int, latent: int, sizes: Sequence[int]) -> np.ndarray:
    """For each window, the split it may serve as a negative: group g with probability sizes[g] / sum(sizes)
    (the groups are test, train and validation), by a hash of (seed, latent, window) alone."""
    total = sum(sizes)
    if total <= 0:
        return np.zeros(len(windows), np.int64)
    keys = _mix64(np.asarray(windows, np.uint64) ^ _salt(seed, latent))
    u = keys.astype(np.float64) / 2.0**64
    cuts = np.cumsum(sizes)[:-1] / total
    return np.searchsorted(cuts, u, side="right")


@functools.lru_cache(maxsize=1024)
def _salt(seed: int, latent: int) -> np.uint64:
    return np.random.SeedSequence([seed, latent, _SIDE_TAG]).generate_state(1, np.uint64)[0]


class CandidatePool:
    """Random windows, drawn from the seed alone and embedded on first use, shared by every latent."""

    def __init__(
        self, cache: ActivationCache, texts: Callable[[np.ndarray], list[str]], embedder: Embedder, size: int, seed: int
    ):
        self.cache = cache
        self.texts = texts  # windows -> their text, as the examples show it
        self.embedder = embedder
        self.size = size
        self.seed = seed
        self._lock = threading.Lock()
        self._windows: np.ndarray | None = None
        self._vectors: np.ndarray | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._windows is None or self._vectors is None:
                n = self.cache.meta.n_windows
                rng = np.random.default_rng([self.seed, _POOL_TAG])
                windows = np.sort(rng.choice(n, size=min(self.size, n), replace=False))
                self._vectors = self.embedder.encode(self.texts(windows))
                self._windows = windows
            return self._windows, self._vectors


def rank_similar(pool: CandidatePool, anchors: list[str]) -> list[int]:
    """Pool windows by their highest cosine to any anchor text, most similar first (ties: lower window)."""
    windows, vectors = pool.get()
    if not len(windows) or not anchors:
        return []
    anchor_vectors = pool.embedder.encode(anchors)
    similarity = (vectors @ anchor_vectors.T).max(axis=1)
    order = np.lexsort((windows, -similarity))
    return [int(w) for w in windows[order]]


def cofiring_jaccard(cache: ActivationCache, latent: int) -> np.ndarray:
    """Estimated token-level Jaccard overlap of every latent's firing with this one's.

    Co-firing is counted over the latent's uniform sample of activating windows and scaled up to its
    total firing count, so the cost is bounded by the sample size, not the corpus. Jaccard, not raw
    counts, so that latents firing almost everywhere do not top every list.
    """
    counts, own = cache.cofiring_counts(latent, cache.sampled_windows(latent))
    out = np.zeros(cache.num_latents)
    if own == 0:
        return out
    fire = cache.state.fire_tokens.astype(np.float64)
    co = np.minimum(counts * (fire[latent] / own), np.minimum(fire, fire[latent]))
    union = fire + fire[latent] - co
    np.divide(co, union, out=out, where=union > 0)
    out[latent] = 0.0
    return out


def cooccurring_latents(cache: ActivationCache, latent: int, k: int) -> list[int]:
    """The k latents that co-fire most with this one (by estimated Jaccard; ties: lower index)."""
    jaccard = cofiring_jaccard(cache, latent)
    order = np.lexsort((np.arange(len(jaccard)), -jaccard))
    return [int(i) for i in order[:k] if jaccard[i] > 0]


def rank_cooccurring(cache: ActivationCache, neighbours: list[int]) -> Iterator[int]:
    """The neighbours' top windows, round robin (each one's strongest first), so no one neighbour
    supplies every negative."""
    tops = [list(cache.top_windows(i)[0]) for i in neighbours]
    for depth in range(max((len(t) for t in tops), default=0)):
        for t in tops:
            if depth < len(t):
                yield int(t[depth])
