"""`autointerp serve`'s options are generated from the server's settings: every option the serve tests give
is parsed into the right setting, one left out keeps the settings' default, and a field added to the
settings is an option with its help."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from autointerp.cli import build_parser
from autointerp.serve.command import add_options, settings_from_args
from autointerp.serve.settings import JOBS, ServeSettings, SettingsError
from autointerp.settings import setting


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def help_text() -> str:
    parser = argparse.ArgumentParser(prog="serve")
    add_options(parser)
    return " ".join(parser.format_help().split())


def test_every_option_the_serve_tests_give_reaches_its_setting(tmp_path, monkeypatch):
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key-of-the-server\nsecond-key-of-the-server\n")
    monkeypatch.delenv("AUTOINTERP_API_KEYS", raising=False)
    args = parse(
        *("--runs", str(tmp_path), "--host", "0.0.0.0", "--port", "8123"),
        *("--api-keys", str(keys), "--api-keys-env", "OTHER_KEYS"),
        *("--cors-origin", "https://a.example", "--cors-origin", "https://b.example"),
        *("--allow-judge", "smollm2", "--allow-judge", "openai:gpt-4o-mini"),
        *("--max-body-bytes", "4096", "--max-explanation-chars", "50", "--workers", "2", "--max-queue", "3"),
        *("--jobs-db", str(tmp_path / "jobs.sqlite"), "--response-cache", str(tmp_path / "responses.sqlite")),
        *("--root-path", "/ai", "--log-level", "warning"),
    )
    settings = settings_from_args(args)
    assert settings.runs == tmp_path and settings.host == "0.0.0.0" and settings.port == 8123
    assert settings.keys is not None and len(settings.keys) == 2
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.allowed_judges == ("smollm2", "openai:gpt-4o-mini")
    assert (settings.max_body_bytes, settings.max_explanation_chars, settings.workers, settings.max_queue) == (
        4096,
        50,
        2,
        3,
    )
    assert settings.jobs_db == tmp_path / "jobs.sqlite" and isinstance(settings.jobs_db, Path)
    assert settings.response_cache == str(tmp_path / "responses.sqlite")
    assert settings.root_path == "/ai" and settings.log_level == "warning"
    assert parse("--hash-key").hash_key


def test_options_left_out_keep_the_settings_defaults(tmp_path):
    settings = settings_from_args(parse("--runs", str(tmp_path), "--no-auth"))
    expected = ServeSettings(runs=tmp_path)
    assert settings.keys is None
    for f in dataclasses.fields(ServeSettings):
        if f.name != "keys":
            assert getattr(settings, f.name) == getattr(expected, f.name), f.name


def test_contradictions_and_a_missing_runs_folder_are_refused(tmp_path):
    with pytest.raises(SettingsError, match="--runs DIR is required"):
        settings_from_args(parse("--no-auth"))
    with pytest.raises(SettingsError, match="contradict"):
        settings_from_args(parse("--runs", str(tmp_path), "--no-auth", "--api-keys", str(tmp_path / "k")))
    with pytest.raises(SystemExit):  # a level uvicorn does not know is refused by the parser
        parse("--runs", str(tmp_path), "--log-level", "loud")


def test_help_shows_each_option_with_its_settings_default():
    text = help_text()
    defaults = ServeSettings(runs=Path("."))
    assert f"--workers N jobs run at once (default: {defaults.workers})" in text
    assert f"--max-queue N jobs queued or running before 429 (default: {defaults.max_queue})" in text
    assert (
        "(repeatable; default: none)" in text
        and "--jobs-db FILE job database (default: RUNS/.serve/jobs.sqlite)" in text
    )
    assert (
        "--api-keys-env NAME environment variable with comma-separated API keys (default: AUTOINTERP_API_KEYS)" in text
    )
    for hidden in ("--keys", "--max-wait-seconds", "--keep-jobs-days"):  # library-only settings
        assert hidden not in text


def test_a_field_added_to_the_settings_is_an_option_with_its_help(tmp_path):
    @dataclass
    class Wider(ServeSettings):
        greeting: str = setting("hello", "what the server says first", cli=JOBS, metavar="TEXT")

    parser = argparse.ArgumentParser(prog="serve")
    add_options(parser, Wider)
    text = " ".join(parser.format_help().split())
    assert "--greeting TEXT what the server says first (default: hello)" in text
    assert "--greeting" not in help_text()  # ServeSettings itself has no such option
    given = settings_from_args(parser.parse_args(["--runs", str(tmp_path), "--no-auth", "--greeting", "hi"]), Wider)
    left_out = settings_from_args(parser.parse_args(["--runs", str(tmp_path), "--no-auth"]), Wider)
    assert isinstance(given, Wider) and given.greeting == "hi" and left_out.greeting == "hello"
