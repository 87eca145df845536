"""A local Ray cluster for tests, and torch's threads as a Ray worker has them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# torch's threads in a Ray worker that caches on CPU: Ray gives it one CPU, and sets OMP_NUM_THREADS to that
WORKER_THREADS = 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to `n` for the block. A cache equals a Ray cache value for value only when
    both forward passes ran on as many threads (a reduction split otherwise can move the last bits, and a TopK
    dictionary then picks another latent at a near-tie), so a test's single pass runs as a worker does."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_cluster(env_vars: dict[str, str] | None = None, num_gpus: int = 0):
    """A local Ray cluster (2 CPUs, `num_gpus` GPUs only counted, no dashboard) whose workers import the
    tests' helpers and see `env_vars`; returns ray (shut it down with ray.shutdown()).

    The workers' PYTHONPATH holds tests/ (for `helpers.*`) and every test folder, as pytest's sys.path does
    here: a function a test module defines travels to a worker by reference, as `test_x.f`."""
    import ray

    tests = Path(__file__).resolve().parents[1]
    folders = [tests, *sorted(d for d in tests.iterdir() if d.is_dir() and any(d.glob("test_*.py")))]
    path = os.pathsep.join(p for p in (*map(str, folders), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {**(env_vars or {}), "PYTHONPATH": path}},
    )
    return ray
