"""How a server is set up: what the command line gives `create_app`, checked before anything listens.

The fields are declared with `setting(...)`, like a run's: those placed on the command line are
`autointerp serve`'s options, generated from them (serve/command.py), so the library and `--help` cannot
disagree about a flag, its help or its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autointerp.errors import ConfigError
from autointerp.serve.auth import KeyRing
from autointerp.settings import Placement, setting

LOOPBACK = ("127.0.0.1", "::1")


class SettingsError(ConfigError):
    """Server options that cannot work, alone or together (the command line exits 2 with the message)."""


SERVER = Placement(("serve",), "server")
SECURITY = Placement(("serve",), "security")
JOBS = Placement(("serve",), "jobs")
# the groups of `autointerp serve --help`, in order (None: the command's own options)
GROUPS: dict[str, str | None] = {"server": None, "security": "security", "jobs": "jobs"}
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


@dataclass
class KeySource:
    """Where the command line finds the API keys (`ServeSettings.keys` is what it finds)."""

    api_keys: Path | None = setting(
        None, "API keys, one per line (or sha256:HEX lines)", cli=SECURITY, parse=Path, metavar="FILE"
    )
    api_keys_env: str = setting(
        "AUTOINTERP_API_KEYS", "environment variable with comma-separated API keys", cli=SECURITY, metavar="NAME"
    )
    no_auth: bool = setting(False, "no API keys: allowed with --host 127.0.0.1 only", cli=SECURITY)

    def ring(self) -> KeyRing | None:
        """The keys (None: no authentication)."""
        if self.no_auth and self.api_keys is not None:
            raise SettingsError("--no-auth and --api-keys contradict each other: give one")
        return None if self.no_auth else KeyRing.load(self.api_keys, self.api_keys_env)


@dataclass
class ServeSettings:
    """A server's settings; those placed on the command line (`cli=`) are `autointerp serve`'s options."""

    runs: Path = setting(help="folder whose run folders are served (required)", cli=SERVER, parse=Path, metavar="DIR")
    host: str = setting("127.0.0.1", "address to listen on; the default is this machine only", cli=SERVER)
    port: int = setting(8000, "port", cli=SERVER)
    keys: KeyRing | None = setting(None, "None: no authentication (only on a loopback address)")
    cors_origins: tuple[str, ...] = setting(
        (),
        "a browser origin allowed to call the API, like https://app.example.org",
        cli=SECURITY,
        flag="--cors-origin",
        metavar="ORIGIN",
        none_means="none",
        repeat=True,
    )
    allowed_judges: tuple[str, ...] = setting(
        (),
        "a judge requests may name besides their run's own, e.g. smollm2 or openai:gpt-4o-mini",
        cli=SECURITY,
        flag="--allow-judge",
        metavar="NAME",
        repeat=True,
    )
    workers: int = setting(4, "jobs run at once", cli=JOBS, metavar="N")
    max_queue: int = setting(256, "jobs queued or running before 429", cli=JOBS, metavar="N")
    jobs_db: Path | None = setting(
        None, "job database", cli=JOBS, parse=Path, metavar="FILE", none_means="RUNS/.serve/jobs.sqlite"
    )
    response_cache: str | None = setting(
        None,
        "judges' response cache for every run",
        cli=JOBS,
        metavar="FILE",
        none_means="each run's own setting, usually ~/.cache/autointerp/responses.sqlite",
    )
    max_body_bytes: int = setting(64 * 1024, "largest request body", cli=SECURITY, metavar="N")
    max_explanation_chars: int = setting(1000, "longest explanation to score", cli=SECURITY, metavar="N")
    max_wait_seconds: float = setting(60.0, "longest a GET /jobs/{id}?wait= holds the request")
    keep_jobs_days: float = setting(30.0, "finished jobs older than this are forgotten at start")
    root_path: str = setting("", "path prefix a reverse proxy serves this under, e.g. /ai", cli=JOBS, metavar="PREFIX")
    log_level: LogLevel = setting(
        "info", "uvicorn's log level; info logs every request's method, path and status", cli=JOBS
    )

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
