"""Explaining and scoring on Ray: shards of latents run by long-lived workers, each an ordinary pipeline run.

The driver picks the (hookpoint, latent) pairs as a single run would, cuts them into shards (a few per worker, so a
slow shard does not hold the run up) and hands each to the next free worker (a Ray actor, one per GPU
when the run needs GPUs, one per CPU otherwise: `workers.py`), which runs `stages.latent_stages` over its
pairs on a `ShardFiles` view of the run folder. Two passes, as in a single run: first
every latent is explained and scored; then, once every shard's labels are merged into the run's
logs, the shuffled-label controls, whose donors are drawn from every labelled latent of the run (a
shard on its own would only see its own). A worker killed mid-shard is restarted and the shard run again
by Ray (`max_retries` times at most); the retry reads what the dead attempt wrote and does only the rest.

Each worker process holds its judges for as long as it lives, which is both passes (a llama.cpp model or
a vLLM engine is loaded once per worker, not per shard), on one event loop of its own; the workers are
killed when the passes are done, or as soon as a shard failed for good (which stops the shards still
running). A worker that was restarted after its process died loads its judges again.
Their response cache is the run's usual SQLite file, resolved on each machine: SQLite in WAL mode with
a busy timeout is safe for several writer processes on one machine (tests/distributed/test_ray.py runs two against
one file), not on a network folder, which is why the default path is each machine's own cache directory.

The progress of every worker goes to one small actor that the driver reads into one bar per pass.

With `--ray-storage URL` the workers do not see the run folder: before each pass the driver uploads what
they read (the merged cache, once; config.json; the logs, which the controls pass needs merged), each
worker mirrors it into a folder of its own machine and runs its shard there as above, and uploads the
shard's logs when the shard ends. The driver downloads them into `RUN/shards/` and merges them as a
shared folder's (see storage.py for the layout).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from autointerp.config import RunConfig
from autointerp.distributed.cluster import DistributedError, connect, worker_count
from autointerp.distributed.shards import SHARDS, ShardFiles, merge_shards, shard_name, split
from autointerp.distributed.storage import Storage, staging_root, worker_label
from autointerp.distributed.workers import Workers, run_shards, worker_options, workers
from autointerp.llm.base import Judge
from autointerp.pipeline import RunSummary
from autointerp.records import LatentId
from autointerp.results import RunFiles

SHARDS_PER_WORKER = 2  # more shards balance uneven latents; each costs a load of the run's tokenizer and logs
MAX_RETRIES = 3  # attempts of a shard after its worker died (Ray's max_retries)
REPORT_EVERY_S = 0.25  # a worker's progress reports, at most this often

RUN = "run"  # in storage: the copy of the run folder the workers read
DONE = "done.json"  # in storage: a latent shard's logs are all uploaded (written last)
PASS = ".pass"  # in a worker's copy of a shard's folder: the pass its logs belong to
INCOMING = "shards.incoming"  # shard logs being downloaded by the driver

JudgeFactory = Callable[[], dict[str, Judge]]  # judges by name, made in the worker (tests: scripted ones)
T = TypeVar("T")


# ---------------------------------------------------------------- in the worker process

_loop: asyncio.AbstractEventLoop | None = None
_held: dict[tuple[Any, ...], dict[str, Judge]] = {}
_held_lock = threading.Lock()


def _on_loop(coro: Coroutine[Any, Any, T], every: Callable[[], None]) -> T:
    """Run `coro` on the worker's one event loop (started on first use), where its judges live, calling
    `every()` from this thread (the task's own: Ray calls are made from it) every REPORT_EVERY_S meanwhile."""
    global _loop
    with _held_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="autointerp-worker-loop", daemon=True).start()
    future = asyncio.run_coroutine_threadsafe(coro, _loop)
    while True:
        try:
            return future.result(timeout=REPORT_EVERY_S)
        except concurrent.futures.TimeoutError:
            every()


def _held_judges(config: RunConfig, stages: set[str], factory: JudgeFactory | None) -> dict[str, Judge]:
    """The worker's judges for this config, made on its first shard and kept for the next ones."""
    from autointerp.llm.judges import make_judge
    from autointerp.llm.providers import JudgeSettings
    from autointerp.stages.latent_stages import stage_judges

    key = (
        repr(factory) if factory is not None else None,
        JudgeSettings.of(config),
        JudgeSettings.of(config, "explainer"),
    )
    with _held_lock:
        held = _held.setdefault(key, {})
        if factory is not None and not held:
            held.update(factory())
        for held_as, (name, role) in stage_judges(config, stages).keys().items():
            if held_as not in held:
                held[held_as] = (
                    held[name] if name in held and factory is not None else make_judge(name, config, role=role)
                )
        return dict(held)


class _Reporter:
    """Counts a shard's finished latents (on the worker's loop) and tells the driver's progress actor (from
    the task's thread: a Ray call from the loop's thread, which outlives the task, is not the task's)."""

    def __init__(self, actor: Any, shard: str):
        self.actor = actor
        self.shard = shard
        self.count = 0
        self.sent = -1

    def __call__(self, latent: LatentId) -> None:
        self.count += 1

    def flush(self) -> None:
        count = self.count
        if self.actor is not None and count != self.sent:
            self.actor.report.remote(self.shard, count)
            self.sent = count


def _cache_stats(judges: dict[str, Judge]) -> dict[str, dict[str, int]]:
    """Each response-cached judge's counters so far (hits, misses...): a shard reports what it added."""
    out = {}
    for name, judge in judges.items():
        stats = getattr(judge, "stats", None)
        if callable(stats):
            out[name] = dict(stats())
    return out


def run_shard(
    run_folder: str,
    shard: str,
    config: RunConfig,
    units: list[LatentId],
    stages: set[str],
    factory: JudgeFactory | None,
    progress: Any,
    storage_url: str | None = None,
    pass_id: str = "",
) -> dict[str, Any]:
    """A Ray task: the stages over `units` (its share of the run's (hookpoint, latent) pairs) on the shard's
    view of the run folder; what it did."""
    from autointerp.cache.store import cache_complete

    host = socket.gethostname()
    if storage_url is not None:
        return _run_shard_from_storage(storage_url, pass_id, shard, config, units, stages, factory, progress)
    run = RunFiles(Path(run_folder))
    if not cache_complete(run.cache):
        raise DistributedError(
            f"worker on {host} cannot see the run's cache {run.cache}: --out must be a folder every machine of "
            "the cluster shares (a network folder), at the same path (or give --ray-storage URL)"
        )
    return _run_shard_in(ShardFiles(run, shard), config, units, stages, factory, progress)


def _run_shard_in(
    files: ShardFiles,
    config: RunConfig,
    units: list[LatentId],
    stages: set[str],
    factory: JudgeFactory | None,
    progress: Any,
) -> dict[str, Any]:
    from autointerp.stages.latent_stages import latent_stages

    host = socket.gethostname()
    shard = files.folder.name
    try:
        files.prepare()
        probe = files.folder / f".write-test-{host}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DistributedError(f"worker on {host} cannot write the shared run folder {files.folder}: {e}") from None
    judges = _held_judges(config, stages, factory)
    before = _cache_stats(judges)
    reporter = _Reporter(progress, shard)
    summary = _on_loop(
        latent_stages(
            files, config, stages, progress=False, judges=judges, ready=lambda: (config, units), on_done=reporter
        ),
        reporter.flush,
    )
    reporter.flush()
    after = _cache_stats(judges)
    spent = {name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]} for name in after}
    judge_lines = tuple(f"{name}: " for name in judges)
    return {
        "explained": summary.explained,
        "scored": summary.scored,
        "skipped": summary.skipped,
        "controlled": summary.controlled,
        "failed_latents": list(summary.failed_latents),
        "messages": [m for m in summary.messages if not m.startswith(judge_lines)],
        "cache": spent,
        "host": host,
    }


def _run_shard_from_storage(
    url: str,
    pass_id: str,
    shard: str,
    config: RunConfig,
    units: list[LatentId],
    stages: set[str],
    factory: JudgeFactory | None,
    progress: Any,
) -> dict[str, Any]:
    """`run_shard` on a machine that does not see the run folder: on this machine's mirror of what the
    driver uploaded, the shard's logs uploaded when it ends (`done.json` last, holding what it did, so a
    retry after the upload only answers that)."""
    storage = Storage(url, worker_label())
    storage.check()
    remote = f"{SHARDS}/{shard}"
    done = storage.read_json(f"{remote}/{DONE}")
    if done is not None and done.get("pass") == pass_id:
        result = dict(done["result"])
        result["failed_latents"] = [LatentId(h, int(i)) for h, i in result["failed_latents"]]
        return result
    mirror = staging_root(url) / "run"
    storage.mirror(RUN, mirror)
    files = ShardFiles(RunFiles(mirror), shard)
    mark = files.folder / PASS
    if not mark.exists() or mark.read_text() != pass_id:  # logs of an earlier pass or run: not this shard's
        shutil.rmtree(files.folder, ignore_errors=True)
        files.folder.mkdir(parents=True)
        mark.write_text(pass_id)
    result = _run_shard_in(files, config, units, stages, factory, progress)
    for log in (files.explanations, files.scores):
        if log.exists():
            storage.put_file(log, f"{remote}/{log.name}")
    failed = [[lid.hookpoint, lid.index] for lid in result["failed_latents"]]
    storage.write_json(f"{remote}/{DONE}", {"pass": pass_id, "result": {**result, "failed_latents": failed}})
    shutil.rmtree(files.folder, ignore_errors=True)
    return result


class _Progress:
    """The driver's view of every shard's progress (a Ray actor): the most each has reported."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def report(self, shard: str, count: int) -> None:
        self.done[shard] = max(self.done.get(shard, 0), count)  # a retried shard counts up again from 0

    def total(self) -> int:
        return sum(self.done.values())


# ---------------------------------------------------------------- in the driver


@dataclass
class RayOptions:
    address: str | None = "local"  # "local": a Ray instance started for the run; "auto"; HOST:PORT
    shards: int | None = None  # None: SHARDS_PER_WORKER per worker
    max_retries: int = MAX_RETRIES
    num_cpus: int | None = None  # a local instance's CPUs (None: the machine's)
    judges: JudgeFactory | None = None  # tests and benches: judges made by this in each worker
    before_cache_shard: Callable[[int, Path], None] | None = None  # tests: called in the worker as a cache shard starts
    storage: str | None = None  # an fsspec URL the machines exchange the run through (None: --out is shared)
    cache_stats: dict[str, dict[str, int]] = field(default_factory=dict)


def run_latent_stages(
    files: RunFiles,
    config: RunConfig,
    stages: set[str],
    options: RayOptions,
    *,
    progress: bool = True,
    ready: Callable[[], RunConfig | tuple[RunConfig, list[LatentId]]] | None = None,
) -> RunSummary:
    """`stages.latent_stages` spread over a Ray cluster: the same rows in the same logs, the same summary."""
    from autointerp.cache.store import HookpointCaches
    from autointerp.stages.latent_stages import check_cached_latents, stage_units

    start = time.perf_counter()
    storage = Storage(options.storage) if options.storage else None
    if storage is not None:
        storage.check()
    ray = connect(options.address, num_cpus=options.num_cpus)
    shutil.rmtree(files.folder / INCOMING, ignore_errors=True)  # downloads cut short: never merged, redone
    merge_shards(files)  # what a driver that died left behind
    caches = HookpointCaches(files.cache)
    check_cached_latents(config, caches)
    if options.judges is None:
        _check_http_judges(config, stages)
    config, latents, note = stage_units(caches, config, ready)
    summary = RunSummary(latents=len(latents))
    if note:
        summary.messages.append(note)
    gpu = _needs_gpu(config)
    slots = worker_count(ray, "GPU" if gpu else "CPU")
    passes = [("latents", stages & {"explain", "score"}, replace(config, controls="none"))]
    if "score" in stages and config.controls == "shuffled":
        passes.append(("controls", {"controls"}, config))
    passes = [p for p in passes if p[1]]
    parts = split(latents, options.shards or slots * SHARDS_PER_WORKER)
    if parts and passes:
        # one worker per GPU (or CPU) for both passes: its judges are made once, on its first shard
        actor_options = worker_options(gpu, options.max_retries, len(parts) * len(passes))
        with workers(ray, min(len(parts), slots), actor_options) as pool:
            for phase, phase_stages, phase_config in passes:
                for result in _run_pass(ray, pool, files, phase, phase_config, phase_stages, parts, options, progress):
                    _add(summary, result, options.cache_stats)
    for name, stats in options.cache_stats.items():
        summary.messages.append(
            f"{name}: response cache (all workers): {stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses, "
            f"{stats.get('bypassed', 0)} uncached (temperature > 0)"
        )
    summary.seconds = time.perf_counter() - start
    return summary


def _publish(storage: Storage, files: RunFiles) -> None:
    """What a pass's workers read, uploaded: the merged cache (unchanged files are not sent again), the
    config and the logs as merged so far. Shard logs left in storage by a driver that died are removed:
    their rows may already be in the run's logs (downloaded and merged before it died), so they are redone
    rather than risk counting them twice."""
    for log in (files.explanations, files.scores):
        if not log.exists():
            log.touch()
    storage.remove(SHARDS)
    storage.publish(
        files.folder, RUN, [files.cache.name, files.config.name, files.explanations.name, files.scores.name]
    )


def _fetch_shards(storage: Storage, files: RunFiles, names: list[str]) -> None:
    """Each finished shard's logs, downloaded into `RUN/shards/NAME/` (whole: each folder is complete
    before it is renamed there, so `merge_shards` never sees half of one)."""
    incoming = files.folder / INCOMING
    for name in names:
        folder = incoming / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        storage.get_folder(f"{SHARDS}/{name}", folder)
        (folder / DONE).unlink(missing_ok=True)
        (files.folder / SHARDS).mkdir(exist_ok=True)
        folder.rename(files.folder / SHARDS / name)
    shutil.rmtree(incoming, ignore_errors=True)


def _add(summary: RunSummary, result: dict[str, Any], cache_stats: dict[str, dict[str, int]]) -> None:
    """A shard's result into the run's summary (messages once) and the response cache's counts."""
    summary.explained += result["explained"]
    summary.scored += result["scored"]
    summary.skipped += result["skipped"]
    summary.controlled += result["controlled"]
    summary.failed_latents.update(result["failed_latents"])
    for message in result["messages"]:
        if message not in summary.messages:
            summary.messages.append(message)
    for name, stats in result["cache"].items():
        total = cache_stats.setdefault(name, {})
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v


def _needs_gpu(config: RunConfig) -> bool:
    """A shard takes a GPU when its judge runs on one (vLLM in process) or its models do (--device cuda)."""
    from autointerp.llm.providers import find_provider

    return config.device.startswith("cuda") or any(
        find_provider(name).gpu for name in (config.judge, config.explainer_model)
    )


def _check_http_judges(config: RunConfig, stages: set[str]) -> None:
    """HTTP judges are reached from the driver before any shard starts, so a wrong URL fails at once (a
    judge loaded in process is checked by each worker as it loads it)."""
    from autointerp.llm.base import check_judge_ready
    from autointerp.llm.judges import make_judge
    from autointerp.llm.providers import find_provider
    from autointerp.stages.latent_stages import stage_judges

    remote = [(name, role) for name, role in stage_judges(config, stages).keys().values() if find_provider(name).remote]
    if not remote:
        return

    async def check() -> None:
        for name, role in remote:
            judge = make_judge(name, replace(config, response_cache=False), role=role)
            try:
                await check_judge_ready(judge)
            finally:
                await judge.aclose()

    asyncio.run(check())


def _run_pass(
    ray: Any,
    pool: Workers,
    files: RunFiles,
    phase: str,
    config: RunConfig,
    stages: set[str],
    parts: list[list[LatentId]],
    options: RayOptions,
    progress: bool,
) -> list[dict[str, Any]]:
    """One pass's shards on the workers, with one bar over all of them, and their logs merged into the run's;
    every shard's result, in shard order. The first shard that fails for good stops the pass (the caller's
    exit from `workers` stops the shards still running) and its error is raised."""
    storage = Storage(options.storage) if options.storage else None
    pass_id = uuid.uuid4().hex[:12]
    if storage is not None:
        _publish(storage, files)
    tracker = ray.remote(num_cpus=0)(_Progress).remote()
    total = sum(len(part) for part in parts)
    shards = {
        shard_name(phase, i): (
            run_shard,
            (
                str(files.folder),
                shard_name(phase, i),
                config,
                part,
                stages,
                options.judges,
                tracker,
                options.storage,
                pass_id,
            ),
        )
        for i, part in enumerate(parts)
    }
    bar = tqdm(total=total, unit="latent", desc=f"{phase} (ray)", disable=not progress, dynamic_ncols=True)
    try:
        results = run_shards(
            ray, pool, shards, name=str, tick=lambda: bar.update(ray.get(tracker.total.remote()) - bar.n)
        )
        bar.update(total - bar.n)
    finally:
        bar.close()
        ray.kill(tracker)
    if storage is not None:
        _fetch_shards(storage, files, sorted(shards))
    merge_shards(files)
    if storage is not None:
        storage.remove(SHARDS)
    return [results[name] for name in sorted(results)]
