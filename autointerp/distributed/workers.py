"""Long-lived Ray workers that run the shards handed to them one after another.

A Ray task that takes a GPU gets a fresh worker process each time (Ray does not reuse one whose CUDA
device is set), so whatever a shard loads into its process, a vLLM engine above all, would be loaded
again for every shard. Instead each worker slot (a GPU when the run needs GPUs, a CPU otherwise: one
code path for both) is one Ray actor, whose process lives as long as the stage does and keeps what its
shards load (the judges of `latents._held_judges`); the driver hands the next shard to whichever
actor is free.

A worker process killed mid-shard is restarted by Ray (the actor's `max_restarts`) and the shard is run
again on it (`max_task_retries`), at most `max_retries` times per shard, as a task would be. Each retry
follows one death, so an actor needs at most as many restarts as its shards have retries. A shard whose
last attempt died too has failed for good; its worker is then replaced by a fresh one, not restarted,
since a shard handed to an actor while it restarts fails without having run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from autointerp.distributed.cluster import DistributedError

K = TypeVar("K", bound=Hashable)


class ShardWorker:
    """A Ray actor: runs the shard functions it is handed, one at a time, in its one process."""

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def worker_options(gpu: bool, max_retries: int, shards: int) -> dict[str, Any]:
    """The Ray options of one worker actor: a GPU or a CPU of its own, restarted after its process died as
    often as the retries of `shards` shards could ask."""
    return {
        **({"num_gpus": 1} if gpu else {"num_cpus": 1}),
        "max_restarts": max(0, max_retries) * max(1, shards),
        "max_task_retries": max(0, max_retries),
    }


class Workers:
    """The worker actors of a stage, all of one kind (`worker_options`)."""

    def __init__(self, ray: Any, count: int, options: dict[str, Any]):
        self.ray = ray
        self.actor = ray.remote(**options)(ShardWorker)
        self.handles = [self.actor.remote() for _ in range(max(1, count))]

    def replace(self, handle: Any) -> Any:
        """A fresh actor in place of one whose process died under a shard's last attempt."""
        self.ray.kill(handle, no_restart=True)
        fresh = self.actor.remote()
        self.handles[self.handles.index(handle)] = fresh
        return fresh

    def close(self) -> None:
        for handle in self.handles:
            self.ray.kill(handle, no_restart=True)


@contextmanager
def workers(ray: Any, count: int, options: dict[str, Any]) -> Iterator[Workers]:
    """`count` worker actors of `options`, killed on the way out (their resources go back to the cluster,
    and a shard still running, after another failed, is stopped)."""
    made = Workers(ray, count, options)
    try:
        yield made
    finally:
        made.close()


def run_shards(
    ray: Any,
    pool: Workers,
    shards: dict[K, tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    name: Callable[[K], str],
    retry_exceptions: list[type[BaseException]] | None = None,
    stop_on_failure: bool = True,
    on_done: Callable[[K, Any], None] | None = None,
    tick: Callable[[], None] | None = None,
    every_s: float = 0.25,
) -> dict[K, Any]:
    """Every shard's result by key: each shard `fn(*args)` run on the next free worker of `pool`, in the
    order given.
    A shard that fails for good is raised (its cause, not Ray's wrapper): at once when `stop_on_failure`
    (the caller's exit from `workers` then stops the others), else once the other shards have ended. `tick`
    is called about every `every_s` seconds while shards run (a progress bar)."""
    queue = deque(shards)
    free = list(pool.handles)
    running: dict[Any, tuple[K, Any]] = {}
    results: dict[K, Any] = {}
    failed: Exception | None = None
    last_tick = time.monotonic()
    while queue or running:
        while free and queue:
            key = queue.popleft()
            fn, args = shards[key]
            actor = free.pop(0)
            method = actor.run.options(retry_exceptions=retry_exceptions) if retry_exceptions else actor.run
            running[method.remote(fn, *args)] = (key, actor)
        done, _ = ray.wait(list(running), num_returns=1, timeout=every_s)
        for ref in done:
            key, actor = running.pop(ref)
            try:
                results[key] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - raised below as what it is
                error = unwrap(ray, e, name(key))
                free.append(pool.replace(actor) if isinstance(e, ray.exceptions.RayActorError) else actor)
                if stop_on_failure:
                    raise error from None
                failed = failed or error
                continue
            free.append(actor)
            if on_done is not None:
                on_done(key, results[key])
        if tick is not None and (not done or time.monotonic() - last_tick >= every_s):
            tick()
            last_tick = time.monotonic()
    if failed is not None:
        raise failed
    return results


def unwrap(ray: Any, error: Exception, shard: str) -> Exception:
    """What made a shard fail for good: the shard's own exception, or its worker's death."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, Exception):
        return cause
    if isinstance(
        error, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError | ray.exceptions.RayActorError
    ):
        return DistributedError(f"shard {shard}: its worker died on every attempt: {error}")
    return DistributedError(f"shard {shard} failed: {error}")
