"""`autointerp serve`: the command line of the HTTP service (argparse only here: FastAPI is imported when it runs)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autointerp.errors import MissingPackageError

if TYPE_CHECKING:
    from autointerp.serve.settings import ServeSettings

EPILOG = """\
examples:
  autointerp serve --runs runs --no-auth                     # http://127.0.0.1:8000/docs, this machine only
  python -c 'import secrets; print(secrets.token_urlsafe(32))' > keys.txt
  autointerp serve --runs runs --api-keys keys.txt --port 8080
  AUTOINTERP_API_KEYS=KEY1,KEY2 autointerp serve --runs runs --allow-judge smollm2
  autointerp serve --hash-key < keys.txt > keys.hashed       # a key file that holds no key

Every folder directly under --runs that holds a config.json is a run, named by its folder. Jobs are kept
in RUNS/.serve/jobs.sqlite: a server stopped or killed mid-queue finishes them after a restart.
"""


def _default(name: str) -> Any:
    """A server setting's default, read from `ServeSettings` so that `--help` and the library agree."""
    from autointerp.serve.settings import ServeSettings

    return next(f.default for f in dataclasses.fields(ServeSettings) if f.name == name)


def add_parser(sub: Any) -> None:
    text = "serve the runs under a folder over HTTP: explain and score latents on request"
    p = sub.add_parser(
        "serve", help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=Path, metavar="DIR", help="folder whose run folders are served (required)")
    p.add_argument(
        "--host",
        default=_default("host"),
        help=f"address to listen on (default: {_default('host')}, this machine only)",
    )
    p.add_argument("--port", type=int, default=_default("port"), help=f"port (default: {_default('port')})")
    g = p.add_argument_group("security")
    g.add_argument("--api-keys", type=Path, metavar="FILE", help="API keys, one per line (or sha256:HEX lines)")
    g.add_argument(
        "--api-keys-env",
        default="AUTOINTERP_API_KEYS",
        metavar="NAME",
        help="environment variable with comma-separated API keys (default: AUTOINTERP_API_KEYS)",
    )
    g.add_argument("--no-auth", action="store_true", help="no API keys: allowed with --host 127.0.0.1 only")
    g.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, like https://app.example.org (repeatable; default: none)",
    )
    g.add_argument(
        "--allow-judge",
        action="append",
        default=[],
        metavar="NAME",
        help="a judge requests may name besides their run's own (repeatable), e.g. smollm2 or openai:gpt-4o-mini",
    )
    g.add_argument(
        "--max-body-bytes",
        type=int,
        default=_default("max_body_bytes"),
        metavar="N",
        help=f"largest request body (default: {_default('max_body_bytes')})",
    )
    g.add_argument(
        "--max-explanation-chars",
        type=int,
        default=_default("max_explanation_chars"),
        metavar="N",
        help=f"longest explanation to score (default: {_default('max_explanation_chars')})",
    )
    g.add_argument("--hash-key", action="store_true", help="print the key file line for a key read from stdin, exit")
    g = p.add_argument_group("jobs")
    g.add_argument(
        "--workers",
        type=int,
        default=_default("workers"),
        metavar="N",
        help=f"jobs run at once (default: {_default('workers')})",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=_default("max_queue"),
        metavar="N",
        help=f"jobs queued or running before 429 (default: {_default('max_queue')})",
    )
    g.add_argument("--jobs-db", type=Path, metavar="FILE", help="job database (default: RUNS/.serve/jobs.sqlite)")
    g.add_argument(
        "--response-cache",
        metavar="FILE",
        help="judges' response cache for every run (default: each run's own setting, usually "
        "~/.cache/autointerp/responses.sqlite)",
    )
    g.add_argument(
        "--root-path",
        default=_default("root_path"),
        metavar="PREFIX",
        help="path prefix a reverse proxy serves this under, e.g. /ai",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level; info logs every request's method, path and status (default: info)",
    )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    from autointerp.serve.auth import KeyRing
    from autointerp.serve.settings import ServeSettings, SettingsError

    if args.runs is None:
        raise SettingsError("--runs DIR is required: the folder whose run folders are served")
    if args.no_auth and args.api_keys is not None:
        raise SettingsError("--no-auth and --api-keys contradict each other: give one")
    keys = None if args.no_auth else KeyRing.load(args.api_keys, args.api_keys_env)
    return ServeSettings(
        runs=args.runs,
        host=args.host,
        port=args.port,
        keys=keys,
        cors_origins=tuple(args.cors_origin),
        allowed_judges=tuple(args.allow_judge),
        workers=args.workers,
        max_queue=args.max_queue,
        jobs_db=args.jobs_db,
        response_cache=args.response_cache,
        max_body_bytes=args.max_body_bytes,
        max_explanation_chars=args.max_explanation_chars,
        root_path=args.root_path,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until stopped. Bad options, unusable keys or job database and a missing `serve` extra are
    `AutointerpError`s, which `cli.main` reports (exit 2)."""
    from autointerp.serve.auth import digest_line
    from autointerp.serve.settings import SettingsError

    if args.hash_key:
        key = sys.stdin.readline().strip()
        if not key:
            raise SettingsError("--hash-key reads a key from stdin, and got none")
        print(digest_line(key))
        return 0
    settings = settings_from_args(args)
    settings.check()
    try:
        from autointerp.serve.http import serve
    except ImportError as e:
        raise MissingPackageError(f"{e}; the service needs: pip install 'autointerp[serve]'") from e
    serve(settings, log_level=args.log_level)
    return 0
