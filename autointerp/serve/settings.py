"""How a server is set up: what the command line gives `create_app`, checked before anything listens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autointerp.errors import ConfigError
from autointerp.serve.auth import KeyRing

LOOPBACK = ("127.0.0.1", "::1")


class SettingsError(ConfigError):
    """Server options that cannot work, alone or together (the command line exits 2 with the message)."""


@dataclass
class ServeSettings:
    runs: Path  # every run folder directly under it is served
    host: str = "127.0.0.1"
    port: int = 8000
    keys: KeyRing | None = None  # None: no authentication (only on a loopback address)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    allowed_judges: tuple[str, ...] = ()  # judges a request may name besides its run's own
    workers: int = 4  # jobs run at once
    max_queue: int = 256  # jobs queued or running; beyond, 429 with Retry-After
    jobs_db: Path | None = None  # None: RUNS/.serve/jobs.sqlite
    response_cache: str | None = None  # judges' response cache for every run (None: each run's setting)
    max_body_bytes: int = 64 * 1024
    max_explanation_chars: int = 1000
    max_wait_seconds: float = 60.0  # longest a GET /jobs/{id}?wait= holds the request
    keep_jobs_days: float = 30.0  # finished jobs older than this are forgotten at start
    root_path: str = ""  # the path prefix a reverse proxy serves this under

    @property
    def jobs_path(self) -> Path:
        return self.jobs_db if self.jobs_db is not None else self.runs / ".serve" / "jobs.sqlite"

    def check(self) -> None:
        if not self.runs.is_dir():
            raise SettingsError(f"--runs {self.runs} is not a folder")
        if self.keys is None and self.host not in LOOPBACK:
            raise SettingsError(
                f"--no-auth serves anyone who can reach the address: it is allowed on 127.0.0.1 only, not {self.host}"
            )
        if self.keys is not None and not len(self.keys):
            raise SettingsError(
                "no API key given: put keys in a file (--api-keys FILE, one per line) or in $AUTOINTERP_API_KEYS "
                "(comma-separated), or run with --no-auth on 127.0.0.1"
            )
        for name, value in (("workers", self.workers), ("max-queue", self.max_queue)):
            if value < 1:
                raise SettingsError(f"--{name} must be at least 1")
        if self.max_explanation_chars < 1 or self.max_body_bytes < 1024:
            raise SettingsError("--max-explanation-chars must be at least 1 and --max-body-bytes at least 1024")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise SettingsError("--root-path must start with '/' and not end with one, like /autointerp")
