"""Streaming the corpus through subject model + dictionary into an `ActivationCache`.

Memory stays flat in the number of tokens: each batch's activations are appended to disk as a
sparse matrix and folded into fixed-size per-latent summaries (top windows by activation, and a
uniform sample of activating windows chosen by hashed random keys, so the sample does not depend on
batch size or on where a resumed run restarted). A checkpoint after every `checkpoint_rows` rows
makes the cache resumable after a crash or a kill.

Several hookpoints are cached in one pass: each batch goes through the subject model once, stopping
after the deepest hookpoint, and each hookpoint's activations are encoded and folded into its own
cache in turn.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from autointerp.cache.store import (
    FILES,
    CacheError,
    CacheMeta,
    LatentState,
    hookpoint_folders,
    read_meta,
    write_index,
    write_meta,
)
from autointerp.settings import CacheSettings
from autointerp.subjects.contexts import ContextSpec
from autointerp.subjects.dictionaries import Encoder
from autointerp.subjects.hookpoints import Hookpoint, capture, capture_many

MAX_DENSE_ELEMENTS = 1 << 25  # encode at most this many (token x latent) activations at once


def hash_keys(windows: torch.Tensor, latents: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic pseudo-random keys in [0, 1) for (window, latent) pairs.

    Keeping the smallest keys per latent is a uniform sample without replacement (bottom-k
    sampling); because a key depends only on the pair and the seed, the sample is the same however
    the corpus was batched or interrupted.
    """
    mask = 0xFFFFFFFF
    h = (windows * 0x2545F491 + latents * 0x1B873593 + seed * 0x27D4EB2F + 0x165667B1) & mask
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & mask
    h = h ^ (h >> 13)
    h = (h * 0x3B9AC9B) & mask
    h = h ^ (h >> 16)
    return h.double() / float(1 << 32)


def update_state(state: LatentState, acts: torch.Tensor, first_window: int, window_len: int, seed: int) -> None:
    """Fold one batch of dense activations [rows, ctx_len, L] into the per-latent summaries."""
    rows, ctx_len, num_latents = acts.shape
    firing = acts > 0
    state.fire_tokens += firing.sum(dim=(0, 1)).numpy()
    wmax = acts.view(rows * (ctx_len // window_len), window_len, num_latents).amax(dim=1)  # [W, L]
    n_windows = wmax.shape[0]
    state.fire_windows += (wmax > 0).sum(0).numpy()
    np.maximum(state.max_act, wmax.amax(0).numpy(), out=state.max_act)

    window_ids = torch.arange(first_window, first_window + n_windows, dtype=torch.int64)
    cand_val = torch.where(wmax > 0, wmax, torch.tensor(-np.inf)).T  # [L, W]
    cand_win = window_ids.expand(num_latents, n_windows)
    vals = torch.cat([torch.from_numpy(state.top_val), cand_val], dim=1)
    wins = torch.cat([torch.from_numpy(state.top_win), cand_win], dim=1)
    top_val, top_win = keep_best(vals, wins, state.top_val.shape[1], largest=True)
    state.top_val, state.top_win = top_val.numpy(), top_win.numpy()

    keys = hash_keys(window_ids[None, :], torch.arange(num_latents, dtype=torch.int64)[:, None], seed)
    keys = torch.where((wmax > 0).T, keys, torch.tensor(np.inf, dtype=torch.float64))
    all_keys = torch.cat([torch.from_numpy(state.sample_key), keys], dim=1)
    all_wins = torch.cat([torch.from_numpy(state.sample_win), cand_win], dim=1)
    sample_key, sample_win = keep_best(all_keys, all_wins, state.sample_key.shape[1], largest=False)
    state.sample_key, state.sample_win = sample_key.numpy(), sample_win.numpy()


def keep_best(
    values: torch.Tensor, windows: torch.Tensor, k: int, *, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the `k` best (value, window) pairs, best first; an empty slot (a non-finite value) holds
    window -1.

    Ties between equal values go to the earlier window, so the choice is a function of the pairs alone:
    a cache folded batch by batch, and one merged from caches of its parts (Ray shards), keep the same
    windows. The callers put the pairs in window order among equal values (what is kept so far, best
    first, then later windows in order), so a stable sort by value is the rule; it is only needed on
    the rows where `topk` (which may order ties either way) met a tie, which are few.
    """
    extra = min(k + 1, values.shape[1])  # one more than kept: whether a value equal to the last kept was left out
    best, order = values.topk(extra, dim=1, largest=largest)
    kept = windows.gather(1, order)
    left_out = best[:, k - 1] == best[:, extra - 1] if extra > k else torch.zeros(len(best), dtype=torch.bool)
    best, kept = best[:, :k], kept[:, :k]
    tied = (best[:, 1:] == best[:, :-1]) & (kept[:, 1:] < kept[:, :-1])  # kept ties out of window order
    finite = torch.isfinite(best)
    redo = ((left_out & finite[:, -1]) | (tied & finite[:, 1:]).any(1)).nonzero()[:, 0]
    if len(redo):
        stable = torch.sort(values[redo], dim=1, descending=largest, stable=True).indices[:, :k]
        best[redo] = values[redo].gather(1, stable)
        kept[redo] = windows[redo].gather(1, stable)
        finite = torch.isfinite(best)
    return best, kept.masked_fill_(~finite, -1)


class _Appender:
    """Appends to the cache's .bin files; truncates them to the last checkpoint when resuming."""

    def __init__(self, folder: Path, lengths: dict[str, int]):
        self.files = {}
        for name in FILES:
            path = folder / name
            mode = "r+b" if path.exists() else "w+b"
            f = open(path, mode)  # noqa: SIM115 - closed in close()
            f.truncate(lengths[name])
            f.seek(0, os.SEEK_END)
            self.files[name] = f
        self.nnz = lengths["latents.bin"] // 4

    def append(self, tokens: np.ndarray, acts: torch.Tensor) -> None:
        flat = acts.reshape(-1, acts.shape[-1])
        token_idx, latent_idx = flat.nonzero(as_tuple=True)
        values = flat[token_idx, latent_idx]
        counts = torch.bincount(token_idx, minlength=flat.shape[0])
        ends = self.nnz + torch.cumsum(counts, 0)
        self.nnz = int(ends[-1]) if len(ends) else self.nnz
        self.files["tokens.bin"].write(tokens.astype(np.int32).tobytes())
        self.files["indptr.bin"].write(ends.numpy().astype(np.int64).tobytes())
        self.files["latents.bin"].write(latent_idx.numpy().astype(np.int32).tobytes())
        self.files["values.bin"].write(values.numpy().astype(np.float16).tobytes())

    def sync(self) -> dict[str, int]:
        lengths = {}
        for name, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            lengths[name] = f.tell()
        return lengths

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _batches(rows: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def encode_hidden(hidden: torch.Tensor, encoder: Encoder, silenced: np.ndarray | None = None) -> torch.Tensor:
    """Dense latent activations [rows, ctx_len, L] of the activations at a hookpoint (position 0 zeroed, and
    the positions `silenced` [rows, ctx_len] marks: BOS, tokens the dictionary never saw in training)."""
    rows, ctx_len, _ = hidden.shape
    chunk = max(1, MAX_DENSE_ELEMENTS // (ctx_len * encoder.num_latents))
    parts = [encoder.encode(hidden[i : i + chunk]).cpu() for i in range(0, rows, chunk)]
    acts = torch.cat(parts)
    # Position 0 of a row carries the attention-sink outlier norm: its latents are artefacts.
    acts[:, 0, :] = 0
    if silenced is not None:
        acts[torch.from_numpy(silenced)] = 0
    return acts


def encode_batch(
    model: torch.nn.Module, hookpoint: Hookpoint, encoder: Encoder, tokens: np.ndarray, device: torch.device
) -> torch.Tensor:
    """Dense latent activations [rows, ctx_len, L] for a batch of token rows (position 0 zeroed)."""
    ids = torch.from_numpy(tokens).long().to(device)
    return encode_hidden(capture(model, hookpoint, ids), encoder)


@dataclass
class Target:
    """One hookpoint to cache: where the model is read, the dictionary that encodes it, the cache's
    metadata (identity and sizes), and the folder its cache lives in. `first_row` is the corpus row
    that the cache's first row is: a part of a corpus cached on its own (a Ray shard) numbers its
    windows as the whole corpus does, so its sample keys and top windows are those of the whole."""

    hookpoint: Hookpoint
    encoder: Encoder
    meta: CacheMeta
    folder: Path
    first_row: int = 0


def build_cache(
    folder: Path,
    rows: Iterator[np.ndarray],
    *,
    model: torch.nn.Module,
    hookpoint: Hookpoint,
    encoder: Encoder,
    meta: CacheMeta,
    settings: CacheSettings,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> CacheMeta:
    """Fill (or finish) the cache of one hookpoint in `folder` from `rows`; returns the final metadata.

    An existing incomplete cache made with the same model, dictionary, hookpoint and corpus resumes
    from its last checkpoint; one made with different settings is an error, never silently mixed.
    """
    target = Target(hookpoint, encoder, meta, Path(folder))
    (done,) = fill_caches([target], rows, model=model, settings=settings, device=device, progress=progress)
    return done


def build_caches(
    root: Path,
    rows: Iterator[np.ndarray],
    *,
    model: torch.nn.Module,
    targets: list[tuple[Hookpoint, Encoder, CacheMeta]],
    settings: CacheSettings,
    device: torch.device | str = "cpu",
    progress: bool = True,
    first_row: int = 0,
) -> list[CacheMeta]:
    """Fill (or finish) the caches of several hookpoints under `root` in one pass over `rows`.

    One hookpoint is cached in `root` itself; several get a subfolder each and an index (store.py).
    A folder that holds a cache of other hookpoints is an error naming both sets. `rows` start at
    corpus row `first_row` (see `Target`).
    """
    names = [meta.hookpoint for _, _, meta in targets]
    if len(set(names)) != len(names):
        raise CacheError(f"hookpoints {names} are not distinct: a run caches each hookpoint once")
    folders = hookpoint_folders(root)
    if folders is None:
        folders = {names[0]: Path(root)} if len(names) == 1 else write_index(Path(root), names)
    elif list(folders) != names:
        raise CacheError(
            f"{root} holds a cache of hookpoints {list(folders)}, not {names}; use another --out or delete the folder"
        )
    return fill_caches(
        [Target(hp, enc, meta, folders[meta.hookpoint], first_row) for hp, enc, meta in targets],
        rows,
        model=model,
        settings=settings,
        device=device,
        progress=progress,
    )


@dataclass
class _Progress:
    """A hookpoint's cache while it is being filled: its summaries, its files, and how far it is."""

    target: Target
    state: LatentState
    appender: _Appender | None = None

    @property
    def n_rows(self) -> int:
        return self.target.meta.n_rows


def fill_caches(
    targets: list[Target],
    rows: Iterator[np.ndarray],
    *,
    model: torch.nn.Module,
    settings: CacheSettings,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[CacheMeta]:
    """Fill (or finish) each target's cache from one pass over `rows`.

    Each batch goes through the model once, up to the deepest hookpoint still needing it, and is then
    encoded and folded into one hookpoint's cache at a time, so memory holds one hookpoint's dense
    activations at a time. Each cache resumes from its own last checkpoint: after a crash between
    two hookpoints' checkpoints, the rows one of them already holds are not folded in again.
    """
    device = torch.device(device)
    work = [_Progress(t, _open_target(t)) for t in targets]
    todo = [p for p in work if not p.target.meta.complete]
    if not todo:
        return [p.target.meta for p in work]
    first = todo[0].target.meta
    max_rows = first.max_tokens // first.ctx_len
    start = min(p.n_rows for p in todo)
    bar = tqdm(
        total=max_rows * first.ctx_len,
        initial=start * first.ctx_len,
        unit="tok",
        desc="caching" if len(targets) == 1 else f"caching {len(targets)} hookpoints",
        disable=not progress,
        dynamic_ncols=True,
    )
    done_rows = start
    since_checkpoint = 0
    try:
        for p in todo:
            p.appender = _Appender(p.target.folder, dict(zip(FILES, p.state.lengths.tolist(), strict=True)))
            contexts = {id(p): ContextSpec.from_dict(p.target.meta.contexts) for p in todo if p.target.meta.contexts}
        for batch in _batches(_skip(rows, start), settings.batch_rows):
            batch = batch[: max_rows - done_rows]
            if len(batch) == 0:
                break
            needing = [p for p in todo if p.n_rows < done_rows + len(batch)]
            ids = torch.from_numpy(batch).long().to(device)
            hidden = capture_many(model, [p.target.hookpoint for p in needing], ids)
            for p, h in zip(needing, hidden, strict=True):
                skip = p.n_rows - done_rows  # rows of this batch the hookpoint's cache holds already
                spec = contexts.get(id(p))
                meta = p.target.meta
                # the dense activations of a few rows at a time: contexts of 1,024 or 2,048 tokens and a
                # dictionary of 131k latents would need gigabytes for a whole batch
                step = max(1, MAX_DENSE_ELEMENTS // (meta.ctx_len * meta.num_latents))
                for start in range(skip, len(batch), step):
                    part = batch[start : start + step]
                    silenced = spec.silenced(part) if spec else None
                    acts = encode_hidden(h[start : start + step], p.target.encoder, silenced)
                    first_window = (p.target.first_row + meta.n_rows) * meta.windows_per_row
                    update_state(p.state, acts, first_window, meta.window_len, meta.seed)
                    assert p.appender is not None
                    p.appender.append(part, acts)
                    meta.n_rows += len(part)
                    del acts
            del hidden
            done_rows += len(batch)
            since_checkpoint += len(batch)
            bar.update(len(batch) * first.ctx_len)
            if since_checkpoint >= settings.checkpoint_rows:
                for p in todo:
                    _checkpoint(p.target.folder, p.target.meta, p.state, p.appender)  # type: ignore[arg-type]
                since_checkpoint = 0
            if done_rows >= max_rows:
                break
        for p in todo:
            p.target.meta.complete = True
            _checkpoint(p.target.folder, p.target.meta, p.state, p.appender)  # type: ignore[arg-type]
    finally:
        for p in todo:
            if p.appender is not None:
                p.appender.close()
        bar.close()
    return [p.target.meta for p in work]


def _open_target(target: Target) -> LatentState:
    """The target's summaries so far (its metadata's `n_rows` set to match), after checking that a cache
    already in its folder was made with the same settings; a new folder gets its metadata written."""
    folder, meta = target.folder, target.meta
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_meta(folder)
    if existing is not None:
        diff = {
            k: (getattr(existing, k), getattr(meta, k))
            for k in _IDENTITY
            if getattr(existing, k) != getattr(meta, k) and not (k == "contexts" and existing.contexts is None)
        }
        if diff:
            raise CacheError(
                f"{folder} holds a cache made with other settings {diff} (cached, requested); "
                "use another --out or delete the folder"
            )
        if existing.complete:
            target.meta = existing
            return LatentState.empty(0, 0, 0)  # nothing left to fold in
        meta.threads = existing.threads if existing.threads == torch.get_num_threads() else None
    else:
        meta.threads = torch.get_num_threads()
        write_meta(folder, meta)
    state_path = folder / "state.npz"
    if state_path.exists():
        state = LatentState.load(state_path)
    else:
        state = LatentState.empty(meta.num_latents, meta.top_k, meta.sample_size)
    meta.n_rows = int(state.n_rows)
    return state


_IDENTITY = (
    "model",
    "dictionary",
    "hookpoint",
    "corpus",
    "num_latents",
    "ctx_len",
    "window_len",
    "top_k",
    "sample_size",
    "seed",
    "max_tokens",
    "contexts",  # not compared with a cache made before contexts were recorded
)


def _skip(rows: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for i, row in enumerate(rows):
        if i >= n:
            yield row


def _checkpoint(folder: Path, meta: CacheMeta, state: LatentState, appender: _Appender) -> None:
    """Data files first, then the summaries that say how much of them is valid."""
    lengths = appender.sync()
    state.n_rows = np.asarray(meta.n_rows, np.int64)
    state.lengths = np.asarray([lengths[name] for name in FILES], np.int64)
    state.save(folder / "state.npz")
    if meta.complete:
        write_meta(folder, meta)
