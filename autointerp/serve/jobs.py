"""The job table: every explain and score request the service accepted, persisted in SQLite.

A job is written (committed) before its id is returned, so an accepted job survives a crash of the
server: at the next start, jobs that were queued are queued again in their order, and jobs that were
running are queued again too (their work is idempotent: see runs.py). A job that was interrupted
`MAX_ATTEMPTS` times is failed instead of being tried forever. A job cancelled (DELETE /jobs/ID) ends as
`cancelled`: at once when it was queued, after the work in flight when it was running (queue.py).

An idempotency key makes a retried POST return the job the first attempt created, not a second job
that pays the judge again. Keys belong to a client (the API key's id), so two clients cannot collide,
and a key reused with a different request is refused rather than answered with the wrong job.

The table is used from the event loop thread only: each statement takes tens of microseconds (WAL,
synchronous=NORMAL: a commit survives the process being killed; a power cut may lose the last ones).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp.errors import AutointerpError

FORMAT_VERSION = 1
MAX_ATTEMPTS = 3
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    kind TEXT NOT NULL,
    run TEXT NOT NULL,
    latent INTEGER NOT NULL,
    request TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (client, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, seq);
CREATE INDEX jobs_client ON jobs (client, seq);
"""


class JobStoreError(AutointerpError):
    """The job database cannot be used (not ours, of another format, unreadable)."""


class IdempotencyConflict(ValueError):
    """An idempotency key this client already used for a different request."""


@dataclass
class Job:
    seq: int
    id: str
    client: str
    kind: str  # "score" | "explain"
    run: str
    latent: int
    request: dict[str, Any]
    status: str  # "queued" | "running" | "done" | "failed" | "cancelled"
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None

    def to_json(self, progress: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "run": self.run,
            "latent": self.latent,
            "request": self.request,
            "status": self.status,
            "progress": progress,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }


def fingerprint(kind: str, run: str, latent: int, request: dict[str, Any]) -> str:
    text = json.dumps([kind, run, latent, request], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_COLUMNS = "seq, id, client, kind, run, latent, request, status, result, error, attempts, created, started, finished"


def _job(row: tuple) -> Job:
    seq, id_, client, kind, run, latent, request, status, result, error, attempts, created, started, finished = row
    return Job(
        seq,
        id_,
        client,
        kind,
        run,
        latent,
        json.loads(request),
        status,
        json.loads(result) if result is not None else None,
        error,
        attempts,
        created,
        started,
        finished,
    )


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            version = self._con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                self._con.execute("BEGIN IMMEDIATE")
                self._con.executescript(_SCHEMA)  # executescript commits
                self._con.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            elif version != FORMAT_VERSION or "jobs" not in tables:
                raise JobStoreError(
                    f"{self.path} is not an autointerp job database of format {FORMAT_VERSION} "
                    f"(user_version {version}); give another --jobs-db"
                )
        except sqlite3.Error as e:
            raise JobStoreError(f"job database {self.path}: {e}") from None

    def close(self) -> None:
        self._con.close()

    def _one(self, where: str, *args: Any) -> Job | None:
        row = self._con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where}", args).fetchone()
        return _job(row) if row else None

    def get(self, job_id: str) -> Job | None:
        return self._one("id = ?", job_id)

    def by_idempotency_key(self, client: str, key: str) -> Job | None:
        return self._one("client = ? AND idempotency_key = ?", client, key)

    def add(
        self, kind: str, run: str, latent: int, request: dict[str, Any], client: str, idempotency_key: str | None
    ) -> Job:
        """A new queued job (the caller has checked the idempotency key and the queue bound)."""
        job_id = uuid.uuid4().hex
        now = time.time()
        self._con.execute(
            "INSERT INTO jobs (id, client, kind, run, latent, request, fingerprint, idempotency_key, status, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
            (
                job_id,
                client,
                kind,
                run,
                latent,
                json.dumps(request, sort_keys=True),
                fingerprint(kind, run, latent, request),
                idempotency_key,
                now,
            ),
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def replay(
        self, kind: str, run: str, latent: int, request: dict[str, Any], client: str, idempotency_key: str
    ) -> Job | None:
        """The job an earlier request with this idempotency key created, or None; a different request under
        the same key raises `IdempotencyConflict`."""
        row = self._con.execute(
            "SELECT fingerprint, id FROM jobs WHERE client = ? AND idempotency_key = ?", (client, idempotency_key)
        ).fetchone()
        if row is None:
            return None
        if row[0] != fingerprint(kind, run, latent, request):
            raise IdempotencyConflict(
                "this Idempotency-Key was already used for a different request; use a new key for a new request"
            )
        return self.get(row[1])

    def claim(self, job_id: str) -> Job | None:
        """Mark a queued job running (one more attempt); None when it is not queued any more."""
        cur = self._con.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started = ?"
            " WHERE id = ? AND status = 'queued'",
            (time.time(), job_id),
        )
        return self.get(job_id) if cur.rowcount == 1 else None

    def finish(self, job_id: str, status: str, result: dict[str, Any] | None, error: str | None) -> None:
        assert status in FINISHED
        self._con.execute(
            "UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? WHERE id = ?",
            (status, json.dumps(result, allow_nan=False) if result is not None else None, error, time.time(), job_id),
        )

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False when it is not queued (any more)."""
        cur = self._con.execute(
            "UPDATE jobs SET status = 'cancelled', finished = ?, error = ? WHERE id = ? AND status = 'queued'",
            (time.time(), "cancelled before it started", job_id),
        )
        return cur.rowcount == 1

    def resume(self) -> list[Job]:
        """After a restart: jobs that were running are queued again (failed after MAX_ATTEMPTS); every
        queued job, oldest first."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            self._con.execute(
                "UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE status = 'running' AND attempts >= ?",
                (
                    time.time(),
                    f"interrupted {MAX_ATTEMPTS} times (the server stopped while running it); not tried again",
                    MAX_ATTEMPTS,
                ),
            )
            self._con.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        rows = self._con.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY seq").fetchall()
        return [_job(r) for r in rows]

    def count_active(self) -> int:
        placeholders = ",".join("?" for _ in ACTIVE)
        return self._con.execute(f"SELECT count(*) FROM jobs WHERE status IN ({placeholders})", ACTIVE).fetchone()[0]

    def list(self, client: str, *, status: str | None = None, run: str | None = None, limit: int = 100) -> list[Job]:
        """The client's jobs, newest first."""
        where, args = ["client = ?"], [client]
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if run is not None:
            where.append("run = ?")
            args.append(run)
        rows = self._con.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [_job(r) for r in rows]

    def prune(self, older_than_seconds: float) -> int:
        """Forget finished jobs older than this; returns how many."""
        cur = self._con.execute(
            f"DELETE FROM jobs WHERE status IN ({','.join('?' for _ in FINISHED)}) AND finished < ?",
            (*FINISHED, time.time() - older_than_seconds),
        )
        return cur.rowcount
