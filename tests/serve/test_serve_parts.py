"""The service's parts on their own: run and file names, API keys, the job table, the log index."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from autointerp.records import LatentId, ScoreRow
from autointerp.results import RunFiles, append_row
from autointerp.serve.auth import MIN_KEY_CHARS, KeyFileError, KeyRing, digest_line
from autointerp.serve.jobs import MAX_ATTEMPTS, IdempotencyConflict, JobStore
from autointerp.serve.paths import BadName, NotFound, file_within, list_runs, run_folder
from autointerp.serve.runs import LogIndex
from autointerp.serve.settings import ServeSettings, SettingsError

KEY = "k" * 40


def _run(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_run_names_cannot_leave_the_served_folder(tmp_path):
    root = tmp_path / "runs"
    _run(root / "good")
    (root / "plain-folder").mkdir()
    _run(tmp_path / "elsewhere")
    (root / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "alias").symlink_to(root / "good", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    root = root.resolve()
    assert run_folder(root, "good") == root / "good"
    assert run_folder(root, "alias") == root / "good"
    for name in ("..", ".", ".serve", "a/b", "/etc", "../runs/good", "go..od", "", "good\x00", "x" * 129):
        with pytest.raises(BadName):
            run_folder(root, name)
    with pytest.raises(BadName, match="outside"):
        run_folder(root, "out")
    for name in ("missing", "plain-folder", "loop"):
        with pytest.raises(NotFound):
            run_folder(root, name)
    assert [name for name, _ in list_runs(root)] == ["alias", "good"]


def test_files_cannot_leave_their_folder(tmp_path):
    site = tmp_path / "report"
    (site / "latents").mkdir(parents=True)
    (site / "index.html").write_text("hi")
    (site / "latents" / "3.html").write_text("three")
    (tmp_path / "secret.txt").write_text("no")
    (site / "leak.html").symlink_to(tmp_path / "secret.txt")
    site = site.resolve()
    assert file_within(site, "latents/3.html").read_text() == "three"
    for bad in ("../secret.txt", "latents/../../secret.txt", "/etc/passwd", "latents\\3.html", "", ".hidden", "a//b"):
        with pytest.raises(BadName):
            file_within(site, bad)
    with pytest.raises(BadName, match="outside"):
        file_within(site, "leak.html")
    with pytest.raises(NotFound):
        file_within(site, "latents")  # a folder is not a file
    with pytest.raises(NotFound):
        file_within(site, "nope.html")


def test_keys_are_kept_as_digests_and_checked_from_both_headers(tmp_path, monkeypatch):
    other = "o" * 40
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\n{KEY}\n{digest_line(other)}\n")
    monkeypatch.setenv("MY_KEYS", "e" * 32 + ", " + "f" * 32)
    ring = KeyRing.load(path, "MY_KEYS")
    assert len(ring) == 4
    assert KEY not in repr(vars(ring)) and other not in repr(vars(ring))
    ids = {ring.client(f"Bearer {k}") for k in (KEY, other, "e" * 32, "f" * 32)}
    assert None not in ids and len(ids) == 4  # one client id per key
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    assert ring.client(f"Basic {basic}") == ring.client(f"Bearer {KEY}")
    for header in (None, "", "Bearer", f"Bearer {KEY}x", f"Token {KEY}", "Basic !!!", "Basic " + "a" * 10, KEY):
        assert ring.client(header) is None
    path.write_text("short\n")
    with pytest.raises(KeyFileError, match=f"shorter than {MIN_KEY_CHARS}") as e:
        KeyRing.load(path, None)
    assert "short" not in str(e.value).replace("shorter", "")
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyRing.load(tmp_path / "nope", None)


def test_settings_refuse_unsafe_setups(tmp_path):
    ServeSettings(tmp_path, keys=None).check()
    ServeSettings(tmp_path, host="::1", keys=None).check()
    for host in ("0.0.0.0", "192.168.1.2", "localhost.evil", "::"):
        with pytest.raises(SettingsError, match="127.0.0.1 only"):
            ServeSettings(tmp_path, host=host, keys=None).check()
    with pytest.raises(SettingsError, match="no API key"):
        ServeSettings(tmp_path, keys=KeyRing([])).check()
    with pytest.raises(SettingsError, match="not a folder"):
        ServeSettings(tmp_path / "nope", keys=None).check()


def test_the_job_table_survives_restarts(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    request = {"explanation": "x", "scorers": ["detection"], "judge": "j"}
    a = store.add("score", "run", 3, request, "alice", "key-1")
    b = store.add("score", "run", 4, request, "alice", None)
    c = store.add("explain", "run", 5, {"explainer": "e"}, "bob", "key-1")  # bob's key-1 is his own
    assert store.replay("score", "run", 3, request, "alice", "key-1").id == a.id
    assert store.replay("score", "run", 3, request, "alice", "key-2") is None
    with pytest.raises(IdempotencyConflict):
        store.replay("score", "run", 4, request, "alice", "key-1")
    assert store.claim(a.id).status == "running"
    assert store.claim(a.id) is None  # claimed once only
    store.finish(a.id, "done", {"scores": []}, None)
    store.claim(b.id)
    assert store.count_active() == 2
    store.close()

    store = JobStore(path)  # the server was killed with b running and c queued
    resumed = store.resume()
    assert [j.id for j in resumed] == [b.id, c.id]  # in their order
    assert store.get(a.id).status == "done" and store.get(a.id).result == {"scores": []}
    assert [j.id for j in store.list("alice")] == [b.id, a.id]
    for _ in range(MAX_ATTEMPTS - 2):
        store.claim(b.id)
        store.resume()
    assert store.get(b.id).attempts == MAX_ATTEMPTS - 1 and store.get(b.id).status == "queued"
    store.claim(b.id)
    store.resume()  # interrupted on its last attempt: failed, not tried for ever
    assert store.get(b.id).status == "failed" and "interrupted" in store.get(b.id).error


def test_the_log_index_reads_only_what_was_appended(tmp_path):
    files = RunFiles(tmp_path)
    files.prepare()
    index = LogIndex(files)
    index.refresh()
    assert index.finished(LatentId("layers.1", 1), "detection", "a", "j") is None

    def row(latent, text, status="ok"):
        return ScoreRow(latent, "layers.1", "detection", status, explanation=text, judge_model="j", metrics={"f1": 1.0})

    append_row(files.scores, row(1, "a"))
    append_row(files.scores, row(1, "b", "error"))
    with open(files.scores, "a") as f:
        f.write(json.dumps(row(2, "c").to_json())[:30])  # a row being written: not read yet
    index.refresh()
    assert index.finished(LatentId("layers.1", 1), "detection", "a", "j").metrics == {"f1": 1.0}
    assert index.finished(LatentId("layers.1", 1), "detection", "b", "j") is None  # failed: not finished
    assert index.finished(LatentId("layers.1", 1), "detection", "a", "other judge") is None
    assert index.finished(LatentId("layers.1", 2), "detection", "c", "j") is None
    files.prepare()  # the torn line is cut, as at a restart
    append_row(files.scores, row(2, "c"))
    index.refresh()
    assert index.finished(LatentId("layers.1", 2), "detection", "c", "j") is not None
    assert [r.explanation for r in asyncio.run(index.score_rows(LatentId("layers.1", 1)))] == ["a", "b"]
    files.scores.write_text("")  # replaced by a shorter file: read again from the start
    index.refresh()
    assert index.finished(LatentId("layers.1", 1), "detection", "a", "j") is None
