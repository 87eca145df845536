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

A run of several hookpoints has one such cache per hookpoint, each in its own subfolder, and an
index that names them in the run's order:

    cache/hookpoints.json   {"hookpoints": [{"name": "layers.4", "folder": "layers.4"}, ...]}
    cache/layers.4/         meta.json, tokens.bin, ... as above
    cache/layers.8/         ...

A run of one hookpoint keeps its cache in `cache/` itself (as every run did before runs could have
several), so folders written by earlier versions read unchanged. Each hookpoint's cache commits its
own checkpoints: an interrupted run resumes every hookpoint from where that hookpoint stopped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.errors import AutointerpError
from autointerp.records import LatentStats

INDEX = "hookpoints.json"
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
    # torch's intra-op threads in the forward passes that wrote it (None: passes with different counts).
    # A forward pass's floats can differ in their last bits between thread counts (reductions are split
    # differently), and a TopK dictionary can turn such a difference at a near-tie into another active
    # latent: two caches of one corpus are equal value for value only when they ran with the same count.
    threads: int | None = None
    # how the corpus was packed into contexts and which positions are not cached (subjects.contexts's
    # ContextSpec.to_dict()); None in caches made before it was recorded
    contexts: dict[str, Any] | None = None

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


# ---------------------------------------------------------------------------------- one cache per hookpoint


def folder_name(hookpoint: str, taken: set[str] | None = None) -> str:
    """A folder name for a hookpoint's cache: the name itself where it is a safe file name (module paths
    and TransformerLens names are), else its safe characters and a number that keeps it unique."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", hookpoint).strip(".") or "hookpoint"
    taken = taken or set()
    if name == hookpoint and name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def hookpoint_folders(root: Path) -> dict[str, Path] | None:
    """The cache folder of each hookpoint in the run's order; None when `root` holds no cache yet."""
    root = Path(root)
    index = root / INDEX
    if index.is_file():
        try:
            entries = json.loads(index.read_text())["hookpoints"]
            return {str(e["name"]): root / str(e["folder"]) for e in entries}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CacheError(f"corrupt cache index {index}: {e}; delete the cache folder to rebuild it") from None
    meta = read_meta(root)
    return None if meta is None else {meta.hookpoint: root}


def write_index(root: Path, hookpoints: list[str]) -> dict[str, Path]:
    """Give each hookpoint a subfolder of `root` and record them; returns hookpoint -> folder."""
    root.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    entries = []
    for name in hookpoints:
        folder = folder_name(name, taken)
        taken.add(folder)
        entries.append({"name": name, "folder": folder})
    atomic_write_bytes(root / INDEX, json.dumps({"hookpoints": entries}, indent=2).encode())
    return {e["name"]: root / e["folder"] for e in entries}


def read_metas(root: Path) -> dict[str, CacheMeta] | None:
    """Each hookpoint's cache metadata (a hookpoint whose cache was not started yet has none); None
    when `root` holds no cache."""
    folders = hookpoint_folders(root)
    if folders is None:
        return None
    return {hp: meta for hp, folder in folders.items() if (meta := read_meta(folder)) is not None}


def cache_complete(root: Path) -> bool:
    folders = hookpoint_folders(root)
    metas = read_metas(root) or {}
    return folders is not None and all(hp in metas and metas[hp].complete for hp in folders)


class HookpointCaches(Mapping[str, ActivationCache]):
    """A run's finished caches, one per hookpoint in the run's order, each opened on first use (its
    per-latent summaries are loaded then, so a run of many hookpoints loads only those it works on)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        folders = hookpoint_folders(self.root)
        if folders is None:
            raise CacheError(f"no activation cache in {self.root} (run `autointerp cache` first)")
        metas = read_metas(self.root) or {}
        unfinished = [hp for hp in folders if hp not in metas or not metas[hp].complete]
        if unfinished:
            raise CacheError(
                f"the activation cache in {self.root} is incomplete (hookpoints {', '.join(unfinished)}): "
                "run `autointerp cache` (or `run`) on this folder to finish it"
            )
        self.folders = folders
        self.metas = metas
        self._open: dict[str, ActivationCache] = {}

    @classmethod
    def of(cls, cache: ActivationCache) -> HookpointCaches:
        """The one cache of a run of one hookpoint, already open."""
        caches = cls.__new__(cls)
        caches.root = cache.folder
        caches.folders = {cache.meta.hookpoint: cache.folder}
        caches.metas = {cache.meta.hookpoint: cache.meta}
        caches._open = {cache.meta.hookpoint: cache}
        return caches

    @property
    def hookpoints(self) -> list[str]:
        return list(self.folders)

    def open(self, hookpoint: str) -> ActivationCache:
        """The hookpoint's cache; a CacheError naming the run's hookpoints for one it does not have."""
        if hookpoint not in self.folders:
            raise CacheError(f"this run has no hookpoint {hookpoint!r}; it has {', '.join(self.folders)}")
        if hookpoint not in self._open:
            self._open[hookpoint] = ActivationCache(self.folders[hookpoint])
        return self._open[hookpoint]

    def __getitem__(self, hookpoint: str) -> ActivationCache:
        if hookpoint not in self.folders:
            raise KeyError(hookpoint)
        return self.open(hookpoint)

    def __contains__(self, hookpoint: object) -> bool:
        return hookpoint in self.folders

    def __iter__(self) -> Iterator[str]:
        return iter(self.folders)

    def __len__(self) -> int:
        return len(self.folders)

    def num_latents(self, hookpoint: str) -> int:
        return self.metas[hookpoint].num_latents
