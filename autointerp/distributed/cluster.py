"""Reaching a Ray cluster: a local instance, the cluster this machine belongs to, or one by address.

An unreachable address must fail in seconds with the address in the message: Ray's own client keeps
retrying for a long while, so a plain TCP connection is tried first.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from autointerp.errors import AutointerpError, MissingPackageError

INSTALL = 'pip install "autointerp[ray]"'
LOCAL = "local"  # bare --ray: a Ray instance started for this run on this machine
CONNECT_TIMEOUT_S = 5.0


class DistributedError(AutointerpError):
    """A Ray run cannot go on: a cluster out of reach, a shared folder a worker cannot use."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingPackageError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """The (host, port) an address names, when it names one ("auto" does not)."""
    parts = urlsplit(address if "://" in address else "tcp://" + address)
    if not parts.hostname or parts.port is None:
        return None
    return parts.hostname, parts.port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    where = _host_port(address)
    if where is None:
        raise DistributedError(f"--ray {address}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection(where, timeout=timeout):
            pass
    except OSError as e:
        raise DistributedError(f"--ray {address}: no Ray cluster answers at {where[0]}:{where[1]} ({e})") from None


def connect(address: str | None = LOCAL, *, num_cpus: int | None = None) -> Any:
    """Ray, connected: to `address` ("auto": the cluster this machine is part of; HOST:PORT or
    ray://HOST:PORT: that one), or a new local instance (None / "local"). A process already connected
    (a test, a notebook) keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", LOCAL):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        return ray
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = " (start one with `ray start --head`, or give its address)" if address == "auto" else ""
        raise DistributedError(f"--ray {address}: cannot connect to a Ray cluster: {e}{hint}") from None
    return ray


def worker_count(ray: Any, resource: str = "CPU") -> int:
    """How many shards can run at once: the cluster's CPUs (or GPUs), at least 1."""
    return max(1, int(ray.cluster_resources().get(resource, 1)))
