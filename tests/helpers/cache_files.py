"""A finished cache read back from its files alone, with no autointerp code: what the tests compare the
activations a run wrote against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def cached(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(token rows [R, ctx], dense activations [R, ctx, L]) of a finished cache, read from its files."""
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.fromfile(folder / "tokens.bin", dtype=np.int32).reshape(-1, meta["ctx_len"])
    ends = np.fromfile(folder / "indptr.bin", dtype=np.int64)
    latents = np.fromfile(folder / "latents.bin", dtype=np.int32)
    values = np.fromfile(folder / "values.bin", dtype=np.float16).astype(np.float32)
    dense = np.zeros((tokens.size, meta["num_latents"]), dtype=np.float32)
    starts = np.concatenate([[0], ends[:-1]])
    for t, (a, b) in enumerate(zip(starts, ends, strict=True)):
        dense[t, latents[a:b]] = values[a:b]
    return tokens, dense.reshape(*tokens.shape, -1)
