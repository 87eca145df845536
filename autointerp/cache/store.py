"""The on-disk activation cache and the per-latent summaries kept beside it.

Layout of a cache folder:

    meta.json      what was cached (model, dictionary, hookpoint, corpus, sizes) and how far
    tokens.bin     int32 token ids, row after row (rows of `ctx_len`)
    indptr.bin     int64: entries of token t are [indptr[t], indptr[t+1]) (indptr[0]=0 implied)
    latents.bin    int32 latent index per nonzero activation
    values.bin     float16 activation per nonzero activation
    state.npz      per-latent counters, top windows by activation, and a uniform sample of windows

The three .bin files form a sparse token-major matrix (CSR) that only ever grows by appending, so
writing it needs no memory proportional to the corpus; the per-latent summaries are bounded by
(number of latents) x (top_k + sample_size). `state.npz` is the commit point of a checkpoint: it
records the rows folded in and the byte lengths of the .bin files then, so a crash mid-append is
undone on resume by truncating.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.records import LatentStats

FILES = ("tokens.bin", "indptr.bin", "latents.bin", "values.bin")
DTYPES = {"tokens.bin": np.int32, "indptr.bin": np.int64, "latents.bin": np.int32, "values.bin": np.float16}


class CacheError(AutointerpError):
    pass


@dataclass
class CacheMeta:
    model: str
    dictionary: str
    hookpoint: str
    corpus: str
    num_latents: int
    ctx_len: int
    window_len: int
    top_k: int
    sample_size: int
    seed: int
    max_tokens: int
    n_rows: int = 0  # final once `complete`; while building, state.npz holds the progress
    complete: bool = False

    @property
    def n_tokens(self) -> int:
        return self.n_rows * self.ctx_len

    @property
    def windows_per_row(self) -> int:
        return self.ctx_len // self.window_len

    @property
    def n_windows(self) -> int:
        return self.n_rows * self.windows_per_row


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_meta(folder: Path, meta: CacheMeta) -> None:
    atomic_write_bytes(folder / "meta.json", json.dumps(asdict(meta), indent=2).encode())


def read_meta(folder: Path) -> CacheMeta | None:
    path = folder / "meta.json"
    if not path.exists():
        return None
    try:
        return CacheMeta(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise CacheError(f"corrupt cache metadata {path}: {e}; delete the cache folder to rebuild it") from None


@dataclass
class LatentState:
    """Per-latent summaries, all arrays indexed by latent. Windows are global window indices."""

    fire_tokens: np.ndarray  # int64 [L]
    fire_windows: np.ndarray  # int64 [L]
    max_act: np.ndarray  # float32 [L]
    top_val: np.ndarray  # float32 [L, top_k], -inf where empty
    top_win: np.ndarray  # int64 [L, top_k]
    sample_key: np.ndarray  # float64 [L, sample_size] random keys, +inf where empty
    sample_win: np.ndarray  # int64 [L, sample_size]
    # The checkpoint this state belongs to: rows folded in, and the byte length of each .bin file
    # then. Saved in the same file as the summaries so the two can never disagree after a crash.
    n_rows: np.ndarray = field(default_factory=lambda: np.zeros((), np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(len(FILES), np.int64))

    @classmethod
    def empty(cls, num_latents: int, top_k: int, sample_size: int) -> LatentState:
        return cls(
            fire_tokens=np.zeros(num_latents, np.int64),
            fire_windows=np.zeros(num_latents, np.int64),
            max_act=np.zeros(num_latents, np.float32),
            top_val=np.full((num_latents, top_k), -np.inf, np.float32),
            top_win=np.full((num_latents, top_k), -1, np.int64),
            sample_key=np.full((num_latents, sample_size), np.inf, np.float64),
            sample_win=np.full((num_latents, sample_size), -1, np.int64),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **asdict(self))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LatentState:
        try:
            with np.load(path) as z:
                return cls(**{k: z[k] for k in z.files})
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise CacheError(f"corrupt cache state {path}: {e}; delete the cache folder to rebuild it") from None


class ActivationCache:
    """Read access to a finished cache: windows, their tokens, and one latent's activations in them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta is None:
            raise CacheError(f"no activation cache in {self.folder} (run `autointerp cache` first)")
        if not meta.complete:
            raise CacheError(
                f"the activation cache in {self.folder} is incomplete: "
                "run `autointerp cache` (or `run`) on this folder to finish it"
            )
        self.meta = meta
        self.state = LatentState.load(self.folder / "state.npz")
        self.tokens = self._map("tokens.bin")
        self.indptr = np.concatenate([[0], self._map("indptr.bin")])
        self.latents = self._map("latents.bin")
        self.values = self._map("values.bin")
        if len(self.tokens) != meta.n_tokens or len(self.indptr) != meta.n_tokens + 1:
            raise CacheError(
                f"cache {self.folder} is inconsistent: {len(self.tokens)} tokens stored, meta.json says {meta.n_tokens}"
            )

    def _map(self, name: str) -> np.ndarray:
        path = self.folder / name
        size = path.stat().st_size if path.exists() else 0
        if size == 0:
            return np.zeros(0, DTYPES[name])
        return np.memmap(path, dtype=DTYPES[name], mode="r")

    @property
    def num_latents(self) -> int:
        return self.meta.num_latents

    def stats(self, latent: int) -> LatentStats:
        s = self.state
        return LatentStats(
            n_tokens=self.meta.n_tokens,
            fire_tokens=int(s.fire_tokens[latent]),
            fire_windows=int(s.fire_windows[latent]),
            max_activation=float(s.max_act[latent]),
        )

    def window_tokens(self, window: int) -> np.ndarray:
        w = self.meta.window_len
        return np.asarray(self.tokens[window * w : (window + 1) * w])

    def _entries(self, window: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        w = self.meta.window_len
        start, end = window * w, (window + 1) * w
        lo, hi = int(self.indptr[start]), int(self.indptr[end])
        counts = np.diff(self.indptr[start : end + 1])
        positions = np.repeat(np.arange(w), counts)
        return lo, positions, np.asarray(self.latents[lo:hi]), np.asarray(self.values[lo:hi])

    def window_activations(self, window: int, latent: int) -> np.ndarray:
        """The latent's activation on each token of the window (zeros where it did not fire)."""
        _, positions, latents, values = self._entries(window)
        out = np.zeros(self.meta.window_len, np.float32)
        mask = latents == latent
        out[positions[mask]] = values[mask].astype(np.float32)
        return out

    def fires_in(self, window: int, latent: int) -> bool:
        _, _, latents, _ = self._entries(window)
        return bool((latents == latent).any())

    def cofiring_counts(self, latent: int, windows: np.ndarray) -> tuple[np.ndarray, int]:
        """Over the given windows: for every latent, on how many tokens it fired together with `latent`;
        and on how many tokens `latent` fired (the entry for `latent` itself equals that)."""
        counts = np.zeros(self.num_latents, np.int64)
        own = 0
        for w in windows:
            _, positions, latents, _ = self._entries(int(w))
            fired = np.unique(positions[latents == latent])
            own += len(fired)
            together = np.isin(positions, fired)
            counts += np.bincount(latents[together], minlength=self.num_latents)
        return counts, own

    def top_windows(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows with the highest max activation, strongest first, and those maxima."""
        vals, wins = self.state.top_val[latent], self.state.top_win[latent]
        keep = vals > 0
        order = np.argsort(-vals[keep], kind="stable")
        return wins[keep][order], vals[keep][order]

    def sampled_windows(self, latent: int) -> np.ndarray:
        """A uniform random sample (without replacement) of the windows where the latent fires."""
        keys, wins = self.state.sample_key[latent], self.state.sample_win[latent]
        keep = np.isfinite(keys)
        return np.sort(wins[keep])
