"""Object storage as the exchange folder of a Ray run whose machines share no folder (`--ray-storage URL`).

Every fsspec call of a Ray run goes through here. The layout under the URL:

- `cache-shards/N/`: a cache shard as its worker made it, `resolved.json` written last (its marker: a
  shard whose marker is there is done, whatever happens to the worker or the driver afterwards);
- `run/`: what the workers of an explain or score pass read, copied from the driver's run folder (the
  merged cache, config.json, the logs), with `run/manifest.json` written last: each file's size and
  modification time on the driver, so a machine re-fetches only what changed since it last looked;
- `shards/NAME/`: a latent shard's logs, uploaded when the shard ends, `done.json` written last.

Each machine keeps its copies in its own cache directory (`$AUTOINTERP_CACHE/ray-storage/KEY/`, KEY
from the URL), so a shard retried on the same machine resumes from what the killed attempt left there.
Credentials and endpoints come from where the protocol's package reads them (for s3fs: the AWS
environment variables and files, e.g. AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from autointerp.cache.store import atomic_write_bytes
from autointerp.distributed.cluster import DistributedError
from autointerp.errors import MissingPackageError

MANIFEST = "manifest.json"
CHECK_TIMEOUT_S = 20.0  # a URL that does not answer a small write, read and delete in this long is out of reach
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
T = TypeVar("T")


class StorageError(DistributedError):
    """The exchange URL is out of reach, refuses a write, or lacks its protocol's package."""


class TransferError(StorageError, OSError):
    """A copy to or from the exchange URL failed part-way: an I/O error too, which Ray retries for cache
    shards (a URL out of reach from the start is a StorageError alone: it fails at once)."""


def is_url(path: str | None) -> bool:
    return bool(path) and "://" in str(path)


def staging_root(url: str) -> Path:
    """This machine's folder for the copies of a run exchanged through `url`."""
    from autointerp.llm.assets import default_cache_dir

    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return default_cache_dir() / "ray-storage" / key


def worker_label() -> str:
    return f"worker on {socket.gethostname()}"


class Storage:
    """The exchange folder at `url`, seen from the driver or a worker (`who`, in every error message)."""

    def __init__(self, url: str, who: str = "the driver"):
        import fsspec

        self.url = url.rstrip("/")
        self.who = who
        protocol = self.url.split("://", 1)[0]
        try:
            # a fresh instance: fsspec caches them by arguments, not by the environment they were made in
            self.fs, self.root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
        except ImportError:
            package = PACKAGES.get(protocol)
            hint = f"pip install {package}" if package else f"install the fsspec package for {protocol}://"
            raise MissingPackageError(f"--ray-storage {self.url}: {protocol}:// needs a package: {hint}") from None
        except ValueError as e:
            raise StorageError(f"--ray-storage {self.url}: not a storage URL fsspec knows ({e})") from None
        self.root = self.root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - every protocol has its own errors: named with the URL
            raise TransferError(f"{self.who}: {what} {self.url} failed: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------ checks

    def check(self, timeout: float = CHECK_TIMEOUT_S) -> None:
        """Fail at once, naming the URL (and who could not reach it), unless a small file can be written,
        read back and deleted there. Bounded in time: some clients retry an unreachable endpoint for long."""
        probe = self._path(f".write-test-{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                self.fs.pipe_file(probe, b"ok")
                self.fs.invalidate_cache()
                if self.fs.cat_file(probe) != b"ok":
                    raise OSError("what was written reads back differently")
                self.fs.rm_file(probe)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - reported below, in the caller's thread
                outcome.append(e)

        thread = threading.Thread(target=attempt, name="autointerp-storage-check", daemon=True)
        thread.start()
        thread.join(timeout)
        if not outcome:
            raise StorageError(f"{self.who} cannot reach --ray-storage {self.url}: no answer in {timeout:.0f} s")
        if outcome[0] is not None:
            e = outcome[0]
            raise StorageError(f"{self.who} cannot write --ray-storage {self.url}: {type(e).__name__}: {e}")

    # ------------------------------------------------------------ single files

    def exists(self, rel: str) -> bool:
        def call() -> bool:
            self.fs.invalidate_cache()
            return bool(self.fs.exists(self._path(rel)))

        return self._call("looking in", call)

    def read_json(self, rel: str) -> Any:
        """The JSON document at `rel`, None when there is none."""

        def call() -> Any:
            self.fs.invalidate_cache()
            try:
                return json.loads(self.fs.cat_file(self._path(rel)))
            except FileNotFoundError:
                return None

        return self._call("reading from", call)

    def write_json(self, rel: str, value: Any) -> None:
        self._call("writing to", lambda: self.fs.pipe_file(self._path(rel), json.dumps(value).encode()))

    def put_file(self, local: Path, rel: str) -> None:
        self._call("uploading to", lambda: self.fs.put_file(str(local), self._path(rel)))

    def get_file(self, rel: str, local: Path) -> None:
        """Download to a temporary name beside `local`, then rename: a reader never sees half a file."""
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._call("downloading from", lambda: self.fs.get_file(self._path(rel), str(part)))
            os.replace(part, local)
        finally:
            part.unlink(missing_ok=True)

    # ------------------------------------------------------------ folders

    def listing(self, rel: str) -> dict[str, int]:
        """Every file under `rel`: its path relative to `rel`, and its size."""

        def call() -> dict[str, int]:
            self.fs.invalidate_cache()
            base = self._path(rel).rstrip("/") + "/"
            found = self.fs.find(base, detail=True)
            return {
                path[len(base) :]: int(info.get("size") or 0)
                for path, info in found.items()
                if path.startswith(base) and info.get("type", "file") == "file"
            }

        return self._call("listing", call)

    def put_folder(self, local: Path, rel: str, *, last: str | None = None) -> None:
        """Upload every file under `local` to `rel/`, the file named `last` after all the others (a marker)."""
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        for name in sorted(names, key=lambda n: n == last):
            self.put_file(local / name, f"{rel}/{name}")

    def get_folder(self, rel: str, local: Path, *, last: str | None = None) -> None:
        """Download every file under `rel/` into `local`, the file named `last` after all the others."""
        names = self.listing(rel)
        for name in sorted(names, key=lambda n: n == last):
            self.get_file(f"{rel}/{name}", local / name)

    def remove(self, rel: str) -> None:
        """Remove everything under `rel` (nothing there is fine)."""

        def call() -> None:
            self.fs.invalidate_cache()
            path = self._path(rel)
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

        self._call("removing from", call)

    # ------------------------------------------------------------ a folder mirrored to many machines

    def publish(self, local: Path, rel: str, names: list[str]) -> None:
        """Make `rel/` hold `names` (files and folders under `local`) as the driver has them: a file whose
        size and modification time the manifest already records for it is not uploaded again; the manifest
        is written last, so a worker never reads one whose files are not all there."""
        entries = {}
        for name in names:
            path = local / name
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if file.exists():
                    stat = file.stat()
                    entries[file.relative_to(local).as_posix()] = [stat.st_size, stat.st_mtime_ns]
        before = self.read_json(f"{rel}/{MANIFEST}") or {}
        there = self.listing(rel)
        for name, entry in entries.items():
            if before.get(name) != entry or there.get(name) != entry[0]:
                self.put_file(local / name, f"{rel}/{name}")
        self.write_json(f"{rel}/{MANIFEST}", entries)

    def mirror(self, rel: str, local: Path) -> None:
        """Make `local` hold what `rel/` holds by its manifest, downloading only the files that are missing
        or changed; files of an older manifest are removed (a `shards` folder is this machine's, kept).
        Worker processes of one machine take turns (a file lock)."""
        from filelock import FileLock

        local.mkdir(parents=True, exist_ok=True)
        with FileLock(str(local.parent / f"{local.name}.lock")):
            entries = self.read_json(f"{rel}/{MANIFEST}")
            if entries is None:
                raise StorageError(f"{self.who}: --ray-storage {self.url} holds no {rel}/{MANIFEST}")
            mine_path = local / f".{MANIFEST}"
            mine = json.loads(mine_path.read_text()) if mine_path.exists() else {}
            for name, entry in entries.items():
                path = local / name
                if mine.get(name) != entry or not path.exists() or path.stat().st_size != entry[0]:
                    self.get_file(f"{rel}/{name}", path)
                    mine[name] = entry
                    atomic_write_bytes(mine_path, json.dumps(mine).encode())
            for path in sorted(local.rglob("*"), reverse=True):
                name = path.relative_to(local).as_posix()
                if name.split("/", 1)[0] in ("shards", f".{MANIFEST}") or name in entries:
                    continue
                if path.is_file():
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            atomic_write_bytes(mine_path, json.dumps(entries).encode())
