"""Caching on Ray: shards of the corpus rows run by long-lived workers, merged into the run's usual cache.

The driver counts the corpus rows the run caches (the tokenizer only, no model), cuts them into
consecutive shards whose bounds fall on whole batches (so each shard feeds the model exactly the
batches a single pass would, and gets the same activations), and records the plan in
`RUN/cache-shards/plan.json`. Each shard is run by the next free worker (a Ray actor per GPU with
`--device cuda`, per CPU otherwise: `workers.py`), which loads the model and dictionaries and caches
its rows, every hookpoint, into `RUN/cache-shards/N/` with its
first row's offset, so its windows, sample keys and top windows are those of the whole corpus. A
worker killed mid-shard (or a shard failing with an I/O or device error) is restarted and retried by Ray and
resumes from the shard's last checkpoint; a shard that
finished is not run again when the run is started again. Once every shard is done the driver merges
them into `RUN/cache` (`cache.merge`): the same files, value for value, as one pass over the corpus.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autointerp.cache.merge import merge_caches
from autointerp.cache.store import atomic_write_bytes, cache_complete
from autointerp.config import RunConfig
from autointerp.distributed.cluster import DistributedError, connect, worker_count
from autointerp.distributed.latents import SHARDS_PER_WORKER, RayOptions
from autointerp.distributed.workers import Workers, run_shards, worker_options, workers
from autointerp.results import RunFiles

CACHE_SHARDS = "cache-shards"
PLAN = "plan.json"
RESOLVED = "resolved.json"  # what a shard's cache resolved (names, sizes), written when it is done
# errors a shard is tried again after, as after its worker died: a file system or a device that failed
# for a moment (CUDA errors are RuntimeErrors); a bad corpus or cache (AutointerpError) fails at once
RETRIED = (OSError, RuntimeError)


def plan_shards(n_rows: int, batch_rows: int, shards: int) -> list[tuple[int, int]]:
    """(first row, rows) of each shard: consecutive, nearly equal, each a whole number of batches but the
    last, none empty."""
    batches = math.ceil(n_rows / batch_rows)
    per = math.ceil(batches / max(1, min(shards, batches))) * batch_rows if batches else batch_rows
    return [(start, min(per, n_rows - start)) for start in range(0, n_rows, per)]


def count_rows(config: RunConfig, corpus: Path) -> int:
    """How many rows the run caches: the corpus's, up to `n_tokens` (the corpus read with the tokenizer)."""
    from autointerp import app

    tokenizer = app.load_tokenizer(config)
    limit = config.n_tokens // config.cache.ctx_len
    return sum(1 for _ in islice(app.corpus_rows(config, tokenizer, corpus), limit))


# ---------------------------------------------------------------- in the worker process


def cache_shard(
    run_folder: str, index: int, config: RunConfig, first_row: int, n_rows: int, before: Any
) -> dict[str, Any]:
    """A Ray task: the cache of the shard's rows in its folder; what it resolved and where it ran."""
    from autointerp import app

    host = socket.gethostname()
    folder = Path(run_folder) / CACHE_SHARDS / str(index)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{host}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DistributedError(f"worker on {host} cannot write the shared run folder {folder}: {e}") from None
    if before is not None:
        before(index, folder)
    resolved = app.cache_part(folder, config, first_row, n_rows)
    atomic_write_bytes(folder / RESOLVED, json.dumps(resolved).encode())
    return {"resolved": resolved, "host": host}


# ---------------------------------------------------------------- in the driver


def run_cache_shards(
    files: RunFiles, config: RunConfig, options: RayOptions, corpus: Path, *, progress: bool = True
) -> dict[str, Any] | None:
    """`app.cache_stage` spread over a Ray cluster; what the cache resolved. None for a finished cache that
    was not made by shards (the caller reads what it resolved as a single run does)."""
    root = files.folder / CACHE_SHARDS
    merged = root / RESOLVED
    if cache_complete(files.cache):
        return json.loads(merged.read_text()) if merged.exists() else None
    ray = connect(options.address, num_cpus=options.num_cpus)
    plan = _plan(root, config, options, ray, corpus)
    folders = [root / str(i) for i in range(len(plan))]
    todo = [i for i, folder in enumerate(folders) if not (folder / RESOLVED).exists()]
    gpu = config.device.startswith("cuda")
    if todo:
        slots = worker_count(ray, "GPU" if gpu else "CPU")
        with workers(ray, min(len(todo), slots), worker_options(gpu, options.max_retries, len(todo))) as pool:
            _run(ray, pool, files, config, plan, todo, options, progress)
    shard_resolved = json.loads((folders[0] / RESOLVED).read_text())
    metas = merge_caches(folders, files.cache, max_tokens=config.n_tokens)
    resolved = {**shard_resolved, "n_tokens": metas[0].n_tokens}
    atomic_write_bytes(merged, json.dumps(resolved).encode())
    for folder in folders:
        shutil.rmtree(folder)
    (root / PLAN).unlink()
    return resolved


def _plan(root: Path, config: RunConfig, options: RayOptions, ray: Any, corpus: Path) -> list[tuple[int, int]]:
    """The shards' rows: as recorded by an earlier start of this run (its shards resume), else made now."""
    path = root / PLAN
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded["n_tokens"] != config.n_tokens or recorded["batch_rows"] != config.cache.batch_rows:
            raise DistributedError(
                f"{root} holds Ray cache shards of other settings ({recorded['n_tokens']} tokens, batches of "
                f"{recorded['batch_rows']} rows); delete it to start the cache again"
            )
        return [(int(a), int(n)) for a, n in recorded["shards"]]
    n_rows = count_rows(config, corpus)
    workers = worker_count(ray, "GPU" if config.device.startswith("cuda") else "CPU")
    plan = plan_shards(n_rows, config.cache.batch_rows, options.shards or workers * SHARDS_PER_WORKER)
    root.mkdir(parents=True, exist_ok=True)
    record = {"n_tokens": config.n_tokens, "batch_rows": config.cache.batch_rows, "shards": plan}
    atomic_write_bytes(path, json.dumps(record).encode())
    return plan


def _run(
    ray: Any,
    pool: Workers,
    files: RunFiles,
    config: RunConfig,
    plan: list[tuple[int, int]],
    todo: list[int],
    options: RayOptions,
    progress: bool,
) -> None:
    """The shards `todo` on the workers, one bar over the rows. A shard that fails for good is raised once
    the others have ended: what they cached is kept for the next start, which runs only the shards not
    finished."""
    total = sum(n for _, n in plan)
    done_before = total - sum(plan[i][1] for i in todo)
    shards = {
        i: (cache_shard, (str(files.folder), i, config, plan[i][0], plan[i][1], options.before_cache_shard))
        for i in todo
    }
    bar = tqdm(
        total=total, initial=done_before, unit="row", desc="caching (ray)", disable=not progress, dynamic_ncols=True
    )
    try:
        run_shards(
            ray,
            pool,
            shards,
            name=lambda i: f"cache-{i}",
            retry_exceptions=list(RETRIED),
            stop_on_failure=False,
            on_done=lambda i, _: bar.update(plan[i][1]),
        )
    finally:
        bar.close()
