"""Fixtures every test folder shares: a tiny random Llama, a tiny sparsify SAE and a cache built from them, so
stage tests need no real model, and a local Ray cluster. Being at the root of tests/, this file also puts
tests/ on sys.path, so every test folder imports the shared code as `helpers.<module>`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.ray_cluster import WORKER_THREADS, start_cluster, torch_threads
from helpers.tiny_subjects import build_tiny_cache, make_tiny_llama, write_sparsify_sae


@pytest.fixture(scope="session")
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_sae(tmp_path) -> Path:
    return write_sparsify_sae(tmp_path / "sae" / "layers.1")


@pytest.fixture(scope="session")
def tiny_cache(tiny_llama, tmp_path_factory):
    return build_tiny_cache(tmp_path_factory.mktemp("tiny_cache"), tiny_llama)


@pytest.fixture
def threads_of_a_worker() -> Iterator[None]:
    """This process's caching runs on the threads of a Ray CPU worker (`torch_threads`)."""
    with torch_threads(WORKER_THREADS):
        yield


@pytest.fixture
def inline_threads(monkeypatch) -> None:
    """`asyncio.to_thread` runs its function inline. The pipeline reads each latent's examples in a thread,
    and which thread finishes first is up to the OS (a busy machine let the last latent reach the judge
    first); inline, the event loop is the only source of interleaving, so a test of the order in which the
    judge is asked does not depend on how fast or busy the machine is."""
    import asyncio

    async def inline(func, /, *args, **kwargs):
        return func(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", inline)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster (`start_cluster`), started once per test module that uses it and shut down after
    that module's last test."""
    ray = start_cluster()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def gpu_cluster():
    """`cluster` that also declares 2 GPUs (Ray's resources are only counted, so none need be there): Ray
    schedules and isolates GPU work as on a GPU machine (a GPU id per worker in CUDA_VISIBLE_DEVICES, no
    reuse of a GPU task's worker process), which nothing GPU-bound on this CPU machine may touch."""
    ray = start_cluster(num_gpus=2)
    yield ray
    ray.shutdown()
