"""`autointerp serve`: the command line of the HTTP service (argparse only here: FastAPI is imported when it runs).

Its options are the fields of `ServeSettings` and `KeySource` (serve/settings.py) that are placed on the
command line, generated as the stage commands' are (option_args.py): a setting added there is an option.
"""

from __future__ import annotations

import argparse
import sys
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


def add_parser(sub: Any) -> None:
    text = "serve the runs under a folder over HTTP: explain and score latents on request"
    p = sub.add_parser(
        "serve", help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(p)


def add_options(parser: argparse.ArgumentParser, settings_class: type | None = None) -> None:
    """The options, generated from the settings' fields (`settings_class`: `ServeSettings` or one that adds
    fields), and `--hash-key`, which is not a setting but a task of its own."""
    from autointerp import option_args
    from autointerp.serve.settings import GROUPS, KeySource, ServeSettings

    groups = option_args.add_options(parser, (KeySource, settings_class or ServeSettings), "serve", GROUPS)
    groups["security"].add_argument(
        "--hash-key", action="store_true", help="print the key file line for a key read from stdin, exit"
    )


def settings_from_args(args: argparse.Namespace, settings_class: type | None = None) -> ServeSettings:
    from autointerp.option_args import values
    from autointerp.serve.settings import KeySource, ServeSettings, SettingsError

    if args.runs is None:
        raise SettingsError("--runs DIR is required: the folder whose run folders are served")
    keys = KeySource(**values(args, KeySource)).ring()
    cls = settings_class or ServeSettings
    return cls(**values(args, cls), keys=keys)


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
    serve(settings)
    return 0
