"""A bag-of-words embedder for tests: texts sharing words are similar, and nothing is downloaded.

It goes through the real `CachedEmbedder`, so tests that use it also exercise batching, the
per-text cache and normalisation.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from autointerp.embeddings import CachedEmbedder

DIM = 512


def bag_of_words(texts: list[str], salt: int = 0) -> np.ndarray:
    out = np.zeros((len(texts), DIM), np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[i, zlib.crc32(f"{salt}:{word}".encode()) % DIM] += 1.0
    return out


def fake_embedder(name: str = "bag-of-words", salt: int = 0, **kw) -> CachedEmbedder:
    return CachedEmbedder(name, lambda: lambda texts: bag_of_words(texts, salt), **kw)
