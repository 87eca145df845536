"""Caching on Ray: shards of the corpus rows run by long-lived workers, merged into the run's usual cache.

The driver counts the corpus rows the run caches (the tokenizer only, no model), cuts them into
consecutive shards whose bounds fall on whole batches (so each shard feeds the model exactly the
batches a single pass would, and gets the same activations), and records the plan in
`RUN/cache-shards/plan.json`. Each shard is run by the next free worker (a Ray actor per GPU with
`--device cuda`, per CPU otherwise: `workers.py`), which loads the model and dictionaries on its first
shard, keeps them for the next ones, and caches
its rows, every hookpoint, into `RUN/cache-shards/N/` with its
first row's offset, so its windows, sample keys and top windows are those of the whole corpus. A
worker killed mid-shard (or a shard failing with an I/O or device error) is restarted and retried by Ray and
resumes from the shard's last checkpoint; a shard that
finished is not run again when the run is started again. Once every shard is done the driver merges
them into `RUN/cache` (`cache.merge`): the same files, value for value, as one pass over the corpus.

With `--ray-storage URL` the workers do not see RUN: each caches its shard in a folder of its own machine
(keyed by the URL and the plan, so a retry on that machine resumes from the checkpoint) and uploads it to
`URL/cache-shards/N/`, `resolved.json` last; a shard whose marker is there is done. The driver downloads
the finished shards into `RUN/cache-shards/N/` and merges them as above.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import uuid
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autointerp.cache.merge import merge_caches
from autointerp.cache.store import atomic_write_bytes, cache_complete
from autointerp.config import RunConfig
from autointerp.corpus import Corpus
from autointerp.distributed.cluster import DistributedError, connect, worker_count
from autointerp.distributed.latents import SHARDS_PER_WORKER, RayOptions
from autointerp.distributed.storage import Storage, staging_root, worker_label
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


def count_rows(config: RunConfig, corpus: Corpus) -> int:
    """How many rows the run caches: the corpus's, up to `n_tokens` (the corpus read with the tokenizer)."""
    from autointerp.stages.cache_stage import corpus_rows
    from autointerp.stages.subject_loading import load_tokenizer

    tokenizer = load_tokenizer(config)
    assert config.cache.ctx_len is not None, "the cache stage sets the context length it resolved"
    limit = config.n_tokens // config.cache.ctx_len
    return sum(1 for _ in islice(corpus_rows(config, tokenizer, corpus), limit))


# ---------------------------------------------------------------- in the worker process

# the subject model and dictionaries this worker last loaded, by what they were loaded from: a worker
# caches its shards one after another, and a large model loads for minutes (one entry: another run's
# model is dropped before the next is loaded, so a GPU never holds two)
_held_models: dict[str, tuple[Any, list[Any]]] = {}


def _held_cache_models(config: RunConfig, dictionary: Any) -> tuple[Any, list[Any]]:
    from autointerp.stages.cache_stage import open_cache_models

    key = repr(
        (
            config.model,
            config.model_revision,
            config.dtype,
            config.device,
            config.neurons_k,
            config.requested_hookpoints,
            dictionary,
        )
    )
    if key not in _held_models:
        _held_models.clear()
        _held_models[key] = open_cache_models(config, dictionary)
    return _held_models[key]


def cache_shard(
    run_folder: str,
    index: int,
    config: RunConfig,
    first_row: int,
    n_rows: int,
    before: Any,
    storage_url: str | None = None,
    plan_id: str = "",
) -> dict[str, Any]:
    """A Ray task: the cache of the shard's rows in its folder; what it resolved and where it ran."""

    host = socket.gethostname()
    if storage_url is not None:
        return _cache_shard_to_storage(storage_url, plan_id, index, config, first_row, n_rows, before)
    folder = Path(run_folder) / CACHE_SHARDS / str(index)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{host}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DistributedError(f"worker on {host} cannot write the shared run folder {folder}: {e}") from None
    return {"resolved": _cache_in(folder, index, config, first_row, n_rows, before), "host": host}


def _cache_in(folder: Path, index: int, config: RunConfig, first_row: int, n_rows: int, before: Any) -> dict[str, Any]:
    """The shard's rows cached into `folder` (shared or staging) by this worker's held model, `resolved.json`
    written last; what the cache resolved."""
    from autointerp.stages.cache_stage import cache_part

    if before is not None:
        before(index, folder)
    resolved = cache_part(folder, config, first_row, n_rows, _held_cache_models)
    atomic_write_bytes(folder / RESOLVED, json.dumps(resolved).encode())
    return resolved


def _cache_shard_to_storage(
    url: str, plan_id: str, index: int, config: RunConfig, first_row: int, n_rows: int, before: Any
) -> dict[str, Any]:
    """`cache_shard` on a machine that does not see the run folder: cached here, then uploaded."""

    host = socket.gethostname()
    storage = Storage(url, worker_label())
    storage.check()
    remote = f"{CACHE_SHARDS}/{index}"
    done = storage.read_json(f"{remote}/{RESOLVED}")
    if done is not None:  # an earlier attempt uploaded it all and died before returning
        return {"resolved": done, "host": host}
    folder = staging_root(url) / f"{CACHE_SHARDS}-{plan_id}" / str(index)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistributedError(f"worker on {host} cannot write its staging folder {folder}: {e}") from None
    resolved = _cache_in(folder, index, config, first_row, n_rows, before)
    storage.put_folder(folder, remote, last=RESOLVED)
    shutil.rmtree(folder, ignore_errors=True)
    return {"resolved": resolved, "host": host}


# ---------------------------------------------------------------- in the driver


def cache_on_ray(
    files: RunFiles,
    config: RunConfig,
    options: RayOptions,
    *,
    progress: bool = True,
    resolved: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The cache stage (`stages.cache_stage`) with the corpus rows cached in shards on a Ray cluster and
    merged into the same cache; returns what was resolved (names, sizes, the contexts) for config.json."""
    from autointerp.stages.cache_stage import build_cache, check_cache_inputs, finished_cache, prepare_contexts

    finished = finished_cache(files, config, resolved)
    if finished is not None:
        return finished
    corpus_path, dictionary = check_cache_inputs(config)
    config, contexts, chosen = prepare_contexts(config, dictionary, echo)
    sharded = run_cache_shards(files, config, options, corpus_path, progress=progress)
    if sharded is None:
        sharded = build_cache(files, config, corpus_path, dictionary, progress=progress, contexts=contexts)
    return {**sharded, **chosen}


def run_cache_shards(
    files: RunFiles, config: RunConfig, options: RayOptions, corpus: Corpus, *, progress: bool = True
) -> dict[str, Any] | None:
    """The corpus rows cached in shards on a Ray cluster and merged into the run's cache; what it resolved.
    None for a finished cache that was not made by shards (the caller reads what it resolved as a single
    run does)."""
    root = files.folder / CACHE_SHARDS
    merged = root / RESOLVED
    if cache_complete(files.cache):
        return json.loads(merged.read_text()) if merged.exists() else None
    storage = Storage(options.storage) if options.storage else None
    if storage is not None:
        storage.check()
    ray = connect(options.address, num_cpus=options.num_cpus)
    plan, plan_id = _plan(root, config, options, ray, corpus, storage)
    folders = [root / str(i) for i in range(len(plan))]
    todo = [i for i, folder in enumerate(folders) if not (folder / RESOLVED).exists()]
    if storage is not None:  # a shard whose marker is in storage is done: only the driver lacks its copy
        uploaded = storage.listing(CACHE_SHARDS)
        todo = [i for i in todo if f"{i}/{RESOLVED}" not in uploaded]
    gpu = config.device.startswith("cuda")
    if todo:
        slots = worker_count(ray, "GPU" if gpu else "CPU")
        with workers(ray, min(len(todo), slots), worker_options(gpu, options.max_retries, len(todo))) as pool:
            _run(ray, pool, files, config, plan, plan_id, todo, options, progress)
    if storage is not None:
        for i, folder in enumerate(folders):
            if not (folder / RESOLVED).exists():
                storage.get_folder(f"{CACHE_SHARDS}/{i}", folder, last=RESOLVED)
    shard_resolved = json.loads((folders[0] / RESOLVED).read_text())
    metas = merge_caches(folders, files.cache, max_tokens=config.n_tokens)
    resolved = {**shard_resolved, "n_tokens": metas[0].n_tokens}
    atomic_write_bytes(merged, json.dumps(resolved).encode())
    for folder in folders:
        shutil.rmtree(folder)
    (root / PLAN).unlink()
    if storage is not None:
        storage.remove(CACHE_SHARDS)
    return resolved


def _plan(
    root: Path, config: RunConfig, options: RayOptions, ray: Any, corpus: Corpus, storage: Storage | None
) -> tuple[list[tuple[int, int]], str]:
    """The shards' rows and the plan's id: as recorded by an earlier start of this run (its shards resume),
    else made now (and what storage holds of an older plan removed)."""
    path = root / PLAN
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded["n_tokens"] != config.n_tokens or recorded["batch_rows"] != config.cache.batch_rows:
            raise DistributedError(
                f"{root} holds Ray cache shards of other settings ({recorded['n_tokens']} tokens, batches of "
                f"{recorded['batch_rows']} rows); delete it to start the cache again"
            )
        return [(int(a), int(n)) for a, n in recorded["shards"]], str(recorded.get("id", ""))
    if storage is not None:
        storage.remove(CACHE_SHARDS)
    n_rows = count_rows(config, corpus)
    workers = worker_count(ray, "GPU" if config.device.startswith("cuda") else "CPU")
    plan = plan_shards(n_rows, config.cache.batch_rows, options.shards or workers * SHARDS_PER_WORKER)
    root.mkdir(parents=True, exist_ok=True)
    plan_id = uuid.uuid4().hex[:12]
    record = {"n_tokens": config.n_tokens, "batch_rows": config.cache.batch_rows, "shards": plan, "id": plan_id}
    atomic_write_bytes(path, json.dumps(record).encode())
    return plan, plan_id


def _run(
    ray: Any,
    pool: Workers,
    files: RunFiles,
    config: RunConfig,
    plan: list[tuple[int, int]],
    plan_id: str,
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
        i: (
            cache_shard,
            (
                str(files.folder),
                i,
                config,
                plan[i][0],
                plan[i][1],
                options.before_cache_shard,
                options.storage,
                plan_id,
            ),
        )
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
