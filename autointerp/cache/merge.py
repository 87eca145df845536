"""One cache from the caches of consecutive parts of a corpus (the shards of a Ray run's cache stage).

Each part is an ordinary finished cache (one hookpoint or several, as `build_caches` writes it) of
some consecutive corpus rows, built with its first row's offset, so its windows carry their numbers
in the whole corpus and its sample keys are the whole corpus's. Joining them gives what one pass
over the corpus writes, value for value: the sparse files end to end (each part's token pointers
moved past the entries before it), counts summed, maxima taken, and the top and sampled windows
chosen again from the parts' own by the rule the builder folds batches with (`keep_best`).

A merge interrupted midway is redone from the parts: a hookpoint's merged cache is marked complete
(its meta.json) only after its files and summaries are written.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from autointerp.cache.build import keep_best
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

COPY_CHUNK = 1 << 22  # token pointers shifted this many at a time


def merge_caches(parts: list[Path], root: Path, *, max_tokens: int) -> list[CacheMeta]:
    """Write into `root` the cache of the parts' rows, in the parts' order (each a finished cache of the
    same hookpoints and settings); returns each hookpoint's metadata. A hookpoint already merged (a merge
    cut short) is kept."""
    if not parts:
        raise CacheError("no cache parts to merge")
    layouts = []
    for part in parts:
        folders = hookpoint_folders(part)
        if folders is None:
            raise CacheError(f"{part} holds no cache to merge")
        layouts.append(folders)
    names = list(layouts[0])
    for part, folders in zip(parts, layouts, strict=True):
        if list(folders) != names:
            raise CacheError(f"{part} caches hookpoints {list(folders)}, the first part {names}")
    existing = hookpoint_folders(root)
    if existing is None:
        targets = {names[0]: Path(root)} if len(names) == 1 else write_index(Path(root), names)
    elif list(existing) != names:
        raise CacheError(
            f"{root} holds a cache of hookpoints {list(existing)}, not {names}; use another --out or delete the folder"
        )
    else:
        targets = existing
    return [_merge_hookpoint([folders[name] for folders in layouts], targets[name], max_tokens) for name in names]


def _merge_hookpoint(parts: list[Path], folder: Path, max_tokens: int) -> CacheMeta:
    metas = []
    for part in parts:
        meta = read_meta(part)
        if meta is None or not meta.complete:
            raise CacheError(f"the cache part {part} is not finished")
        metas.append(meta)
    first = metas[0]
    for part, meta in zip(parts, metas, strict=True):
        other = replace(meta, n_rows=first.n_rows, max_tokens=first.max_tokens, threads=first.threads)
        if other != first:
            raise CacheError(f"the cache part {part} was made with other settings than {parts[0]}")
    threads = first.threads if all(m.threads == first.threads for m in metas) else None
    merged = replace(first, max_tokens=max_tokens, n_rows=sum(m.n_rows for m in metas), complete=True, threads=threads)
    folder.mkdir(parents=True, exist_ok=True)
    done = read_meta(folder)
    if done is not None and done.complete:
        if done != merged:
            raise CacheError(
                f"{folder} holds a finished cache of other settings than its Ray shards; use another --out"
            )
        return done
    write_meta(folder, replace(merged, complete=False))
    lengths = _join_files(parts, folder)
    state = _join_states(parts, metas)
    state.n_rows = np.asarray(merged.n_rows, np.int64)
    state.lengths = np.asarray([lengths[name] for name in FILES], np.int64)
    state.save(folder / "state.npz")
    write_meta(folder, merged)
    return merged


def _join_files(parts: list[Path], folder: Path) -> dict[str, int]:
    """The parts' sparse files end to end; each part's token pointers moved past the entries before it."""
    lengths = {}
    for name in FILES:
        entries = 0  # nonzero activations in the parts before this one
        with open(folder / name, "wb") as out:
            for part in parts:
                path = part / name
                if name != "indptr.bin":
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, out)
                    continue
                ends = np.memmap(path, dtype=np.int64, mode="r") if path.stat().st_size else np.zeros(0, np.int64)
                for i in range(0, len(ends), COPY_CHUNK):
                    out.write((np.asarray(ends[i : i + COPY_CHUNK]) + entries).tobytes())
                entries += (part / "latents.bin").stat().st_size // 4
            out.flush()
            lengths[name] = out.tell()
    return lengths


def _join_states(parts: list[Path], metas: list[CacheMeta]) -> LatentState:
    """Counts summed, maxima taken, the best windows of all parts (parts in corpus order, so that equal
    values keep their window order, as `keep_best` needs)."""
    states = [LatentState.load(part / "state.npz") for part in parts]
    meta = metas[0]
    out = LatentState.empty(meta.num_latents, meta.top_k, meta.sample_size)
    for s in states:
        out.fire_tokens += s.fire_tokens
        out.fire_windows += s.fire_windows
        np.maximum(out.max_act, s.max_act, out=out.max_act)
    top_val, top_win = keep_best(
        torch.from_numpy(np.concatenate([s.top_val for s in states], axis=1)),
        torch.from_numpy(np.concatenate([s.top_win for s in states], axis=1)),
        meta.top_k,
        largest=True,
    )
    sample_key, sample_win = keep_best(
        torch.from_numpy(np.concatenate([s.sample_key for s in states], axis=1)),
        torch.from_numpy(np.concatenate([s.sample_win for s in states], axis=1)),
        meta.sample_size,
        largest=False,
    )
    out.top_val, out.top_win = top_val.numpy(), top_win.numpy()
    out.sample_key, out.sample_win = sample_key.numpy(), sample_win.numpy()
    return out
