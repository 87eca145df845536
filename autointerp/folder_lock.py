"""One writer at a time in a run folder.

The logs of a run folder are appended by whoever runs a stage on it, and a second writer would break
the promises the logs make: two `autointerp score` on one folder both see a latent unscored and both
pay for it (the row is then in the log twice), and the torn-line repair a command does when it starts
could cut a line another process is in the middle of writing. So every command that writes the logs
or the tables (`cache`, `explain`, `score`, `run`, and the HTTP service while its jobs write) first takes
the folder's lock, an OS file lock (`filelock`) on `FOLDER/.autointerp.lock`.

The OS lock is what decides: it is released when its holder ends, however it ends (a crash, SIGKILL),
so a dead holder never blocks the folder. Beside it, `FOLDER/.autointerp.lock.json` says who holds it
(pid, host, command line, since when), only so the message of the one refused can name the holder:
it is written once the lock is held and removed before it is let go. A holder that was killed leaves
that file behind; it is never trusted on its own: it is only read when the OS lock is held by someone,
and a file that names a process of this host that is gone is taken for what it is (the new holder has
not written its own yet) rather than shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from autointerp.errors import AutointerpError

LOCK_NAME = ".autointerp.lock"
HOLDER_NAME = ".autointerp.lock.json"
POLL_S = 0.2  # between two attempts of a waiting writer
HOLDER_RETRY_S = 1.0  # how long a refused writer waits for a new holder to say who it is


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder's lock."""

    pid: int
    host: str
    command: str
    since: float  # time.time() when the lock was taken

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} ({self.command}), since {when}"

    def gone(self) -> bool:
        """The process is known to have ended: it ran on this host and no process has its pid now (a
        holder on another host cannot be checked from here)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a live process of another user
            return False
        return False


class FolderBusy(AutointerpError):
    """Another command (or the HTTP service) is writing the run folder."""

    def __init__(self, folder: Path, holder: Holder | None):
        who = holder.describe() if holder is not None else "a process that has not said who it is yet"
        super().__init__(
            f"{folder} is being written by another command: {who}; wait for it to end, or give --wait "
            "(wait=True in Python) to start once it has"
        )
        self.folder = folder
        self.holder = holder


def command_line() -> str:
    """This process's command line, as the holder file shows it (`autointerp score --out runs/x`)."""
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    if name in ("cli.py", "__main__.py", "autointerp"):  # the console script, or python -m autointerp.cli
        name = "autointerp"
    text = shlex.join([name, *argv[1:]])
    return text if len(text) <= 500 else text[:499] + "…"


class FolderLock:
    """The lock of one run folder, held by this object (reentrant: a stage inside `run` takes it again)."""

    def __init__(self, folder: Path, command: str | None = None):
        from filelock import FileLock

        self.folder = Path(folder)
        self.command = command
        # not thread-local: the service takes it on its event loop and a stage may release it from a thread
        self._lock = FileLock(str(self.folder / LOCK_NAME), thread_local=False)
        self._depth = 0

    @property
    def holder_file(self) -> Path:
        return self.folder / HOLDER_NAME

    @property
    def held(self) -> bool:
        return self._depth > 0

    def try_acquire(self) -> bool:
        """Take the lock if nobody else holds it; whether this object holds it now."""
        if self._depth:
            self._depth += 1
            return True
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            return False
        self._depth = 1
        try:
            self._write_holder()
        except BaseException:
            self.release()
            raise
        return True

    def acquire(self, *, wait: bool = False, waiting: Callable[[Holder | None], None] | None = None) -> None:
        """Take the lock; when another process holds it, raise `FolderBusy` naming it, or (`wait`) call
        `waiting` with the holder once and take the lock as soon as it is let go."""
        told = False
        while not self.try_acquire():
            if not wait:
                raise FolderBusy(self.folder, self.holder(patience=HOLDER_RETRY_S))
            if not told and waiting is not None:
                waiting(self.holder(patience=HOLDER_RETRY_S))
                told = True
            time.sleep(POLL_S)

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        with contextlib.suppress(FileNotFoundError):
            self.holder_file.unlink()
        self._lock.release()

    @contextlib.contextmanager
    def hold(self, *, wait: bool = False, waiting: Callable[[Holder | None], None] | None = None) -> Iterator[None]:
        self.acquire(wait=wait, waiting=waiting)
        try:
            yield
        finally:
            self.release()

    def holder(self, patience: float = 0.0) -> Holder | None:
        """Who holds the lock, as they wrote it; None when that is not known (yet). A file left by a holder
        of this host that has ended is not believed: within `patience` seconds the new holder writes its own."""
        deadline = time.monotonic() + patience
        while True:
            found = read_holder(self.holder_file)
            if found is not None and not found.gone():
                return found
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _write_holder(self) -> None:
        holder = Holder(os.getpid(), socket.gethostname(), self.command or command_line(), time.time())
        temporary = self.holder_file.with_name(f"{HOLDER_NAME}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(holder)))
        os.replace(temporary, self.holder_file)  # a reader sees the whole file or the previous one


def read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text())
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), float(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
