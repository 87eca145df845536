"""Shards of a run folder: where each writes, what it reads, and how their logs join the run's.

A shard is an ordinary run over some latents whose logs live in `RUN/shards/NAME/`. It *reads* the
run's logs and then its own, so it resumes exactly as a single run would: what the run had finished
before is skipped, and so is what an earlier attempt of the same shard wrote before its worker was
killed (Ray retries the shard; the retry reads the rows the dead attempt left and does the rest).

The driver merges a shard by appending its complete rows to the run's logs and removing its folder.
That must happen exactly once even if the driver itself dies mid-merge, so a ledger
(`shards/merging.json`) is written first, naming the shard and the sizes of the run's logs before
the append: a merge found pending on the next start is undone (the logs cut back to those sizes)
and done again while the shard's folder is there, or only forgotten once it is gone (the folder is
removed after the append, so its absence means the append finished).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from autointerp.cache.store import atomic_write_bytes
from autointerp.records import ExplanationRow, ScoreRow
from autointerp.results import EXPLANATIONS, SCORES, RunFiles, read_explanations, read_scores

SHARDS = "shards"
LEDGER = "merging.json"
PHASES = ("latents", "controls")  # the order their shards are merged in
T = TypeVar("T")


class ShardFiles(RunFiles):
    """One shard's view of a run folder: the run's cache and logs to read, its own logs to write."""

    def __init__(self, run: RunFiles, name: str):
        super().__init__(run.folder / SHARDS / name)
        self.run = run
        self.cache = run.cache
        self.config = run.config

    def explanation_rows(self) -> Iterator[ExplanationRow]:
        yield from read_explanations(self.run.explanations)
        yield from read_explanations(self.explanations)

    def score_rows(self) -> Iterator[ScoreRow]:
        yield from read_scores(self.run.scores)
        yield from read_scores(self.scores)


def shard_name(phase: str, index: int) -> str:
    return f"{phase}-{index:05d}"


def split(units: list[T], n: int) -> list[list[T]]:
    """`units` in `n` contiguous, nearly equal parts (none empty), in order."""
    n = max(1, min(n, len(units)))
    size, extra = divmod(len(units), n)
    parts, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        parts.append(units[start:end])
        start = end
    return [p for p in parts if p]


def _order(folder: Path) -> tuple[int, str]:
    phase = folder.name.split("-", 1)[0]
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), folder.name)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _complete_bytes(path: Path) -> bytes:
    """The file's complete lines (a torn last line, from a worker killed mid-write, is left out)."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def _append(path: Path, data: bytes) -> None:
    if not data:
        return
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cut(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())


def merge_shards(files: RunFiles) -> int:
    """Append every shard's rows to the run's logs, exactly once, and remove the shards; returns how many
    rows were added. Only the driver calls this, while no shard is running."""
    root = files.folder / SHARDS
    if not root.exists():
        return 0
    files.prepare()
    ledger = root / LEDGER
    added = 0
    if ledger.exists():
        pending = json.loads(ledger.read_text())
        shard = root / pending["shard"]
        if shard.exists():  # the append may have been cut short: undo it, then do it again
            _cut(files.explanations, pending["sizes"][EXPLANATIONS])
            _cut(files.scores, pending["sizes"][SCORES])
            added += _merge_one(files, shard, ledger)
        ledger.unlink()
    for shard in sorted((p for p in root.iterdir() if p.is_dir()), key=_order):
        added += _merge_one(files, shard, ledger)
        ledger.unlink()
    return added


def _merge_one(files: RunFiles, shard: Path, ledger: Path) -> int:
    sizes = {EXPLANATIONS: _size(files.explanations), SCORES: _size(files.scores)}
    atomic_write_bytes(ledger, json.dumps({"shard": shard.name, "sizes": sizes}).encode())
    added = 0
    for name, target in ((EXPLANATIONS, files.explanations), (SCORES, files.scores)):
        data = _complete_bytes(shard / name)
        _append(target, data)
        added += data.count(b"\n")
    shutil.rmtree(shard)
    return added
