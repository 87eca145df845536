"""Shuffled-label controls: which latent lends its label to which, so every score has a chance level.

A label scored on its own latent's held-out examples says little on its own: a small judge says Yes
to half of anything, and a generic label ("nouns") fits many latents. Scoring the same examples
with *another* latent's label gives the score a wrong label gets on exactly those examples, beside
the real one. The lender (the donor) of each latent's control label comes from a derangement, a
permutation with no fixed point, so no latent is its own control; it is drawn from the run's seed
over the latents in a fixed order, so the same run pairs the same latents.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from autointerp.records import LatentId
from autointerp.settings import CONTROL_KINDS

__all__ = ["CONTROL_KINDS", "TOO_FEW", "derangement", "donor_map"]

TOO_FEW = "the shuffled-label control needs at least two explained latents; scoring without it"


def derangement(n: int, seed: int) -> list[int]:
    """A permutation `p` of range(n) with p[i] != i for every i, the same for the same (n, seed).

    Drawn uniformly among all derangements: random permutations are drawn until one has no fixed
    point (about e = 2.7 draws on average, whatever n).
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, not {n}")
    rng = np.random.default_rng([seed, n, zlib.crc32(b"shuffled-label control")])
    identity = np.arange(n)
    while True:
        p = rng.permutation(n)
        if not (p == identity).any():
            return [int(i) for i in p]


def donor_map(latents: Iterable[LatentId], seed: int) -> dict[LatentId, LatentId]:
    """Each latent's donor: the latent whose label its control scores. Latents are ordered by
    (hookpoint, index) first, so the map does not depend on the order they were listed in."""
    ordered = sorted(set(latents), key=lambda lid: (lid.hookpoint, lid.index))
    p = derangement(len(ordered), seed)
    return {lid: ordered[p[i]] for i, lid in enumerate(ordered)}
