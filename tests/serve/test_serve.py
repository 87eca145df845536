"""`autointerp serve` end to end: a real uvicorn server on 127.0.0.1 (with the scripted judges of
report_fixtures), talked to over HTTP with `autointerp.client`."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from helpers.report_fixtures import PAYLOAD, judge, make_run
from helpers.serve_helpers import KEY, OTHER_KEY, copy_run, free_port, start_server

from autointerp.client import AsyncClient, Client, ServeError
from autointerp.config import load_config
from autointerp.llm.scripted import ScriptedJudge
from autointerp.records import ScoreRow
from autointerp.results import RunFiles, read_jsonl, read_scores
from autointerp.stages.latent_stages import score_label
from autointerp.stages.open_run import OpenRun


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama) -> Path:
    """alpha: a run explained and scored by the pipeline (what the CLI does); the others are copies of it
    without scores, for the service to score."""
    root = tmp_path_factory.mktemp("served")
    make_run(root / "alpha", tiny_llama)
    for name in ("crowd", "echo", "fresh"):
        copy_run(root / "alpha", root / name)
    return root


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    """A file the server's judges wait for: there (they answer at once) unless a test takes it away to hold
    a job mid-scoring."""
    path = tmp_path_factory.mktemp("gate") / "open"
    path.touch()
    return path


@pytest.fixture(scope="module")
def server(runs, gate, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    s = start_server(runs, state, "--max-queue", "512", "--allow-judge", "tokens", delay=0.002, gate=gate)
    yield s
    assert s.stop(), s.log.read_text()[-3000:]


@pytest.fixture
def client(server):
    with Client(server.url, KEY, timeout=60) as c:
        yield c


def current_labels(folder: Path) -> dict[int, str]:
    return {i: r.explanation for i, r in RunFiles(folder).explanations_by_latent().items() if r.status == "ok"}


def rows_by_key(folder: Path) -> dict[tuple[int, str, str], ScoreRow]:
    rows = list(read_scores(RunFiles(folder).scores))
    keys = [(r.latent, r.scorer, r.explanation) for r in rows]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]  # none duplicated
    return dict(zip(keys, rows, strict=True))


# -- auth ---------------------------------------------------------------------------------------------


def test_every_route_but_health_needs_a_key(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    routes = [
        ("GET", "/runs"),
        ("GET", "/runs/alpha"),
        ("GET", "/runs/alpha/latents/0"),
        ("POST", "/runs/alpha/latents/0/score"),
        ("POST", "/runs/alpha/latents/0/explain"),
        ("GET", "/jobs"),
        ("GET", "/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/runs/alpha/report/"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]
    wrong = "test-key-wrong-wrong-wrong-wrong-wrong"
    for method, path in routes:
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": "Basic !!"}):
            r = httpx.request(method, server.url + path, headers=headers, json={"explanation": "x"})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["field"] == "Authorization" and "Bearer" in r.json()["error"]
            assert wrong not in r.text
    assert httpx.get(server.url + "/runs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(server.url + "/runs", headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 200
    # a browser's Basic auth: any user name, the key as the password (how the report opens in one)
    basic = base64.b64encode(f"me:{KEY}".encode()).decode()
    assert httpx.get(server.url + "/docs", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    challenge = httpx.get(server.url + "/runs/alpha/report/").headers["www-authenticate"]
    assert challenge.startswith("Basic")
    with Client(server.url, wrong) as c, pytest.raises(ServeError) as e:
        c.runs()
    assert e.value.status == 401


def test_keys_are_never_logged_or_stored(server, client):
    wrong = "test-key-never-log-me-never-log-me"
    httpx.get(server.url + "/runs", headers={"Authorization": f"Bearer {wrong}"})
    job = client.score("fresh", 4, "the words: violin", scorers=["detection"])
    client.wait(job["id"], timeout=60)
    time.sleep(0.2)
    log = server.log.read_text()
    assert "GET /runs" in log  # the access log is on, and holds no key
    for secret in (KEY, OTHER_KEY, wrong):
        assert secret not in log
    table = server.log.parent / "jobs.sqlite"
    for path in (table, table.with_name("jobs.sqlite-wal")):
        if path.exists():
            assert KEY.encode() not in path.read_bytes()


# -- reading -------------------------------------------------------------------------------------------


def test_runs_and_a_latents_record(client, runs):
    names = [r["name"] for r in client.runs()]
    assert names == ["alpha", "crowd", "echo", "fresh"]
    alpha = client.run("alpha")
    assert alpha["num_latents"] == 32 and alpha["judge"] == "scripted-judge"
    assert alpha["explained"] == 6 and alpha["finished_scores"] == {"detection": 6, "fuzzing": 6}
    assert alpha["config"]["config"]["scorers"] == ["detection", "fuzzing"]
    latent = client.latent("alpha", 4)
    expected = RunFiles(runs / "alpha").explanations_by_latent()[4]
    assert latent["explanation"]["explanation"] == expected.explanation
    assert {len(latent["examples"][s]) for s in ("test", "negatives")} == {10}
    example = latent["examples"]["test"][0]
    assert len(example["str_tokens"]) == len(example["activations"]) == 8 and max(example["activations"]) > 0
    # every judged window is one of the held-out examples the record shows
    assert {s["scorer"] for s in latent["scores"]} == {"detection", "fuzzing"}
    held_out = {e["window"] for e in latent["examples"]["test"] + latent["examples"]["negatives"]}
    detection = next(s for s in latent["scores"] if s["scorer"] == "detection")
    assert {j["window"] for j in detection["judgments"]} == held_out
    assert all(j["answer"] in ("Yes", "No", "Maybe") for j in detection["judgments"])


def test_the_report_is_served_with_corpus_text_escaped(client, server):
    page = client.report("alpha")
    assert "autointerp report" in page and "latents/4.html" in page
    latent_page = client.report("alpha", "latents/4.html")
    assert "&lt;script&gt;document.title" in latent_page
    assert PAYLOAD.strip() not in latent_page
    r = httpx.get(server.url + "/runs/alpha/report/", headers={"Authorization": f"Bearer {KEY}"})
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    r = httpx.get(server.url + "/runs/alpha/report", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 307 and r.headers["location"] == "report/"


# -- refusing bad input --------------------------------------------------------------------------------


def _post(server, path: str, body, headers=None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(server.url + path, json=body, headers=headers, **kw)


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "words"),
    [
        ("/runs/alpha/latents/4/score", {"explanation": ""}, 422, "explanation", "empty"),
        ("/runs/alpha/latents/4/score", {"explanation": "   "}, 422, "explanation", "empty"),
        ("/runs/alpha/latents/4/score", {"explanation": "x" * 1001}, 422, "explanation", "at most 1000"),
        ("/runs/alpha/latents/4/score", {"explanation": "two\nlines"}, 422, "explanation", "one line"),
        ("/runs/alpha/latents/4/score", {"explanation": 7}, 422, "explanation", "string"),
        ("/runs/alpha/latents/4/score", {}, 422, "explanation", "required"),
        ("/runs/alpha/latents/4/score", {"explanation": "a", "scorer": "x"}, 422, "scorer", "not permitted"),
        ("/runs/alpha/latents/4/score", {"explanation": "a", "scorers": ["nope"]}, 422, "scorers", "unknown"),
        ("/runs/alpha/latents/4/score", {"explanation": "a", "scorers": []}, 422, "scorers", "1 to 16"),
        ("/runs/alpha/latents/4/score", {"explanation": "a", "judge": "smollm2"}, 422, "judge", "not served"),
        ("/runs/alpha/latents/4/score", {"explanation": "a", "judge": "/etc/x.gguf"}, 422, "judge", "allowed:"),
        ("/runs/alpha/latents/4/explain", {"explainer": "openai:gpt-4o"}, 422, "explainer", "not served"),
        ("/runs/alpha/latents/32/score", {"explanation": "a"}, 404, "latent", "out of range"),
        ("/runs/alpha/latents/-1/score", {"explanation": "a"}, 422, "latent", "greater than or equal"),
        ("/runs/alpha/latents/abc/score", {"explanation": "a"}, 422, "latent", "integer"),
        ("/runs/alpha/latents/2/score", {"explanation": "a"}, 422, "latent", "fewer than its min_examples"),
        ("/runs/nope/latents/4/score", {"explanation": "a"}, 404, "run", "no run named"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(server, path, body, status, field, words):
    r = _post(server, path, body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and words in r.json()["error"], r.json()


def test_size_limits_json_and_headers(server):
    r = _post(server, "/runs/alpha/latents/4/score", {"explanation": "a" * 70_000})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit holds as the body streams in
        yield b'{"explanation": "'
        for _ in range(80):
            yield b"a" * 1000
        yield b'"}'

    r = httpx.post(
        server.url + "/runs/alpha/latents/4/score",
        content=chunks(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    r = httpx.post(
        server.url + "/runs/alpha/latents/4/score",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = _post(server, "/runs/alpha/latents/4/score", {"explanation": "a"}, {"Idempotency-Key": "x" * 201})
    assert r.status_code == 422 and r.json()["field"] == "Idempotency-Key"
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(server.url + "/jobs/0123456789abcdef0123456789abcdef?wait=3600", headers=headers)
    assert r.status_code == 422 and r.json()["field"] == "wait"
    r = httpx.get(server.url + "/jobs/not-a-job", headers=headers)
    assert r.status_code == 404 and r.json()["field"] == "job_id"


def test_cors_is_off_unless_an_origin_is_given(server):
    r = httpx.options(
        server.url + "/runs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


# -- path traversal ------------------------------------------------------------------------------------


def test_traversal_is_refused(server, runs, tmp_path):
    outside = copy_run(runs / "alpha", tmp_path / "outside", keep_scores=True)
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    (runs / "alpha" / "report").mkdir(exist_ok=True)
    (runs / "alpha" / "report" / "leak").symlink_to(runs / "alpha" / "config.json")
    (runs / "inner").symlink_to(runs / "alpha", target_is_directory=True)  # a link inside is fine
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        secret = (runs / "alpha" / "config.json").read_text()
        for path in (
            "/runs/..",
            "/runs/%2e%2e",
            "/runs/%2e%2e/latents/4",
            "/runs/..%2f..%2fetc/latents/4",
            "/runs/%2Fetc",
            "/runs/.serve",
            "/runs/escape",
            "/runs/escape/latents/4",
            "/runs/alpha/report/..%2fconfig.json",
            "/runs/alpha/report/%2e%2e/config.json",
            "/runs/alpha/report/%2Fetc%2Fpasswd",
            "/runs/alpha/report/latents/..%2f..%2fconfig.json",
            "/runs/alpha/report/leak",
        ):
            r = httpx.get(server.url + path, headers=headers)
            assert r.status_code in (400, 404), (path, r.status_code, r.text[:200])
            assert secret not in r.text and "root:" not in r.text
        r = _post(server, "/runs/escape/latents/4/score", {"explanation": "a"})
        assert r.status_code == 400 and "outside" in r.json()["error"]
        assert "escape" not in [run["name"] for run in httpx.get(server.url + "/runs", headers=headers).json()["runs"]]
        assert httpx.get(server.url + "/runs/inner", headers=headers).status_code == 200
    finally:
        for link in (runs / "escape", runs / "inner", runs / "alpha" / "report" / "leak"):
            link.unlink()


# -- jobs ----------------------------------------------------------------------------------------------


def test_200_concurrent_score_requests(server, runs, tmp_path):
    """200 requests for 12 distinct pieces of work (6 latents x their current label or another): every job
    finishes, each score is computed and written once, the judge is asked exactly what scoring each label
    once asks, and the scores equal the pipeline's (the CLI's) for the same label."""
    labels = current_labels(runs / "crowd")
    latents = sorted(labels)
    words = ["rocket", "storm", "oyster", "pencil", "bread", "tunnel"]
    other = {i: f"the words: {w}, river" for i, w in zip(latents, words, strict=True)}
    requests = []
    for n in range(200):
        latent = latents[n % len(latents)]
        requests.append((latent, labels[latent] if n % 12 < 6 else other[latent]))
    before = len(server.judge_calls())

    async def go():
        async with AsyncClient(server.url, KEY, timeout=120) as c:
            jobs = await asyncio.gather(*(c.score("crowd", latent, text) for latent, text in requests))
            assert all(j["status"] in ("queued", "running", "done") for j in jobs)
            return await asyncio.gather(*(c.wait(j["id"], timeout=300) for j in jobs))

    finished = asyncio.run(go())
    assert [j["status"] for j in finished] == ["done"] * 200, [j["error"] for j in finished if j["error"]]
    assert len({j["id"] for j in finished}) == 200
    computed = [s for j in finished for s in j["result"]["scores"] if not s["reused"]]
    assert len(computed) == 24  # 12 labels x 2 scorers, each computed by one job only

    served = rows_by_key(runs / "crowd")  # asserts that no score row is duplicated
    assert len(served) == 24
    cli = rows_by_key(runs / "alpha")
    for latent, text in labels.items():
        for scorer in ("detection", "fuzzing"):
            assert served[(latent, scorer, text)].to_json() == cli[(latent, scorer, text)].to_json()
    for job in finished:  # each job's answer is the row in the log
        for s in job["result"]["scores"]:
            row = served[(job["latent"], s["scorer"], job["request"]["explanation"])]
            assert s["metrics"] == row.metrics and s["n_failed"] == row.n_failed

    # the judge was asked exactly what scoring the 12 labels once in process asks, nothing twice
    baseline = copy_run(runs / "alpha", tmp_path / "baseline")
    config, _ = load_config(baseline / "config.json")
    scripted = ScriptedJudge(judge, model="scripted-judge")

    async def in_process():
        run = OpenRun(RunFiles(baseline), config)
        for latent in latents:
            for text in (labels[latent], other[latent]):
                rows = await score_label(run, latent, text, ["detection", "fuzzing"], scripted)
                for row in rows:
                    assert row.to_json() == served[(latent, row.scorer, text)].to_json()

    asyncio.run(in_process())
    assert len(server.judge_calls()) - before == len(scripted.calls)

    # results.parquet is rebuilt from the log and shows each latent's current label's scores, as the CLI's does
    with Client(server.url, KEY) as c:
        c.report("crowd")  # waits for the results tables to be rebuilt
    mine, theirs = (
        pd.read_parquet(runs / "crowd" / "results.parquet"),
        pd.read_parquet(runs / "alpha" / "results.parquet"),
    )
    # (the pipeline's run also scored shuffled-label controls, which the service does not)
    scored = [c for c in theirs.columns if c.startswith(("detection_", "fuzzing_")) and "_control_" not in c]
    columns = ["explanation", *scored]
    pd.testing.assert_frame_equal(mine[columns], theirs[columns])


def test_the_same_label_again_is_answered_from_the_response_cache(server, client, runs):
    """A label scored in one run folder, scored in another over the same windows: the scorer runs and writes
    its row there, and the judge is asked nothing it was asked before (the response cache answers; only the
    re-asks of unreadable answers, samples at temperature > 0 by design, go to the judge again)."""
    label = "the words: anchor, candle"
    start = len(server.judge_calls())
    first = client.wait(client.score("crowd", 5, label)["id"], timeout=60)
    paid = server.judge_calls()[start:]
    again = client.wait(client.score("echo", 5, label)["id"], timeout=60)
    new = server.judge_calls()[start + len(paid) :]
    assert len(paid) >= 20 and all(call["temperature"] > 0 for call in new)
    assert len(new) == sum(call["temperature"] > 0 for call in paid)
    assert [s["reused"] for s in again["result"]["scores"]] == [False, False]  # computed, from cached answers
    assert [s["metrics"] for s in again["result"]["scores"]] == [s["metrics"] for s in first["result"]["scores"]]
    for scorer in ("detection", "fuzzing"):
        mine, theirs = rows_by_key(runs / "echo")[(5, scorer, label)], rows_by_key(runs / "crowd")[(5, scorer, label)]
        assert mine.judgments == theirs.judgments and mine.metrics == theirs.metrics
    # the row's usage is what this scoring paid: only the re-asks
    assert sum(s["usage"]["calls"] for s in again["result"]["scores"]) == len(new)
    # in the same folder, the finished row itself answers: no scorer runs, no row is added
    lines = len((runs / "echo" / "scores.jsonl").read_text().splitlines())
    third = client.wait(client.score("echo", 5, label)["id"], timeout=60)
    assert [s["reused"] for s in third["result"]["scores"]] == [True, True]
    assert len((runs / "echo" / "scores.jsonl").read_text().splitlines()) == lines


def test_idempotency_keys(server, client):
    first = client.score("fresh", 9, "the words: lantern", idempotency_key="retry-1")
    again = client.score("fresh", 9, "the words: lantern", idempotency_key="retry-1")
    assert again["id"] == first["id"]
    r = _post(
        server, "/runs/fresh/latents/9/score", {"explanation": "the words: lantern"}, {"Idempotency-Key": "retry-1"}
    )
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true" and r.json()["id"] == first["id"]
    with pytest.raises(ServeError) as e:
        client.score("fresh", 9, "something else", idempotency_key="retry-1")
    assert e.value.status == 422 and e.value.field == "Idempotency-Key"
    with Client(server.url, OTHER_KEY) as other:  # keys belong to a client: another one's is its own
        theirs = other.score("fresh", 9, "the words: lantern", idempotency_key="retry-1")
        assert theirs["id"] != first["id"]
        with pytest.raises(ServeError) as e:
            other.job(first["id"])  # and another client's jobs do not exist for it
        assert e.value.status == 404
        assert first["id"] not in [j["id"] for j in other.jobs()]
    assert first["id"] in [j["id"] for j in client.jobs(run="fresh")]


def held_events(client: Client, gate: Path, submit: Callable[[], dict]) -> list[dict]:
    """The events of the job `submit` makes, its judge held (gate closed) until the stream has shown it
    scoring: so the stream starts before the job can end, however slowly a busy machine sends the request
    for it."""
    gate.unlink()
    opener = threading.Timer(30, gate.touch)  # a job never shown scoring fails the test, never hangs it
    opener.start()
    try:
        events = []
        for event in client.events(submit()["id"]):
            events.append(event)
            if (event["progress"] or {}).get("stage") == "scoring":
                gate.touch()
        return events
    finally:
        opener.cancel()
        gate.touch()


def test_explain_with_progress_events(server, client, runs, gate):
    files = RunFiles(runs / "fresh")
    assert 14 not in files.explanations_by_latent()
    job = client.explain("fresh", 14)
    events = list(client.events(job["id"]))
    assert events[-1]["status"] == "done" and all(e["status"] != "done" for e in events[:-1])
    result = events[-1]["result"]
    row = files.explanations_by_latent()[14]
    assert result["explanation"] == row.explanation and row.explainer_model == "scripted-explainer"
    assert result["explanation"].startswith("the words: ") and result["reused"] is False
    assert row.train_windows  # the same row the CLI writes: what the explainer saw
    again = client.wait(client.explain("fresh", 14)["id"], timeout=60)
    assert again["result"]["reused"] is True and again["result"]["explanation"] == row.explanation
    assert [r["latent"] for r in read_jsonl(files.explanations)].count(14) == 1
    # a job that takes a while shows its stages as it goes
    seen = [e["status"] for e in held_events(client, gate, lambda: client.score("fresh", 14, row.explanation))]
    assert seen[-1] == "done" and len(seen) >= 2
    stages = [
        e["progress"]["stage"]
        for e in held_events(client, gate, lambda: client.score("fresh", 17, "the words: pepper"))
        if e["progress"]
    ]
    assert "scoring" in stages

    async def follow() -> list[dict]:
        async with AsyncClient(server.url, KEY) as c:
            job = await c.score("fresh", 17, "the words: copper")
            return [e async for e in c.events(job["id"])]

    events = asyncio.run(follow())
    assert events[-1]["status"] == "done" and events[-1]["result"]["scores"][0]["scorer"] == "detection"


def test_the_tokens_explainer_asks_no_model(server, client, runs):
    asked = len(server.judge_calls("scripted-explainer"))
    job = client.wait(client.explain("fresh", 22, explainer="tokens")["id"], timeout=60)
    assert job["status"] == "done" and job["result"]["explainer_model"] == "tokens"
    assert RunFiles(runs / "fresh").explanations_by_latent()[22].explanation == job["result"]["explanation"]
    assert len(server.judge_calls("scripted-explainer")) == asked


def test_a_full_queue_answers_429_and_cors_when_asked_for(runs, tmp_path):
    options = ("--workers", "1", "--max-queue", "2", "--cors-origin", "https://app.example")
    # the judge holds every request until the gate opens: no job can finish while the queue is filled,
    # however slowly a busy machine sends the requests
    gate = tmp_path / "gate"
    s = start_server(runs, tmp_path, *options, gate=gate)
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        r = httpx.options(s.url + "/runs", headers={"Origin": "https://app.example", **preflight})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(s.url + "/runs", headers={"Origin": "https://evil.example", **preflight})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"

        statuses = []
        for n in range(5):
            r = _post(s, "/runs/fresh/latents/13/score", {"explanation": f"the words: queue {n}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "full" in r.json()["error"]
        assert statuses == [202, 202, 429, 429, 429]
        gate.touch()
        with Client(s.url, KEY) as c:  # the client waits out Retry-After and gets its job in
            job = c.score("fresh", 13, "the words: patient", scorers=["detection"])
            assert c.wait(job["id"], timeout=120)["status"] == "done"
    finally:
        assert s.stop()


@pytest.mark.slow
def test_killed_mid_queue_then_restarted_finishes_every_job(runs, tmp_path):
    """SIGKILL with jobs running and queued; the restarted server finishes them all, each score written once."""
    folder = copy_run(runs / "alpha", runs.parent / f"{runs.name}-kill" / "kill")
    state = tmp_path / "state"
    labels = [f"the words: {w}" for w in ("river", "stone", "market", "winter", "garden")]
    latents = sorted(current_labels(folder))
    work = [(latent, text) for text in labels for latent in latents]  # 30 jobs
    s = start_server(folder.parent, state, "--workers", "2", delay=0.01)
    with Client(s.url, KEY) as c:
        ids = [c.score("kill", latent, text, scorers=["detection"])["id"] for latent, text in work]
        while sum(j["status"] == "done" for j in c.jobs(limit=100)) < 4:
            time.sleep(0.05)
    s.kill()
    with sqlite3.connect(state / "jobs.sqlite") as db:
        left = Counter(status for (status,) in db.execute("SELECT status FROM jobs"))
    assert left["running"] >= 1 and left["queued"] >= 1, left

    s = start_server(folder.parent, state)
    try:
        with Client(s.url, KEY) as c:
            jobs = [c.wait(i, timeout=300) for i in ids]
        assert [j["status"] for j in jobs] == ["done"] * len(work), [j["error"] for j in jobs]
        assert any(j["attempts"] == 2 for j in jobs)  # the ones cut off were run again
        rows = rows_by_key(folder)  # none duplicated, even for a job killed after writing its row
        assert set(rows) == {(latent, "detection", text) for latent, text in work}
        for job in jobs:
            row = rows[(job["latent"], "detection", job["request"]["explanation"])]
            assert job["result"]["scores"][0]["metrics"] == row.metrics
    finally:
        assert s.stop()


# -- the command -----------------------------------------------------------------------------------------


def test_the_command_refuses_unsafe_setups(runs, tmp_path, capsys, monkeypatch):
    import io

    from autointerp.cli import main

    monkeypatch.setenv("AUTOINTERP_API_KEYS", "")

    def serve(*argv: str) -> tuple[int, str]:
        return main(["serve", *argv]), capsys.readouterr().err

    rc, err = serve("--runs", str(runs), "--no-auth", "--host", "0.0.0.0")
    assert rc == 2 and "127.0.0.1 only" in err
    rc, err = serve("--runs", str(runs))
    assert rc == 2 and "no API key given" in err
    short = tmp_path / "short.txt"
    short.write_text("abc123\n")
    rc, err = serve("--runs", str(runs), "--api-keys", str(short))
    assert rc == 2 and "shorter than 16" in err and "abc123" not in err
    rc, err = serve("--runs", str(tmp_path / "nope"), "--no-auth")
    assert rc == 2 and "not a folder" in err
    rc, err = serve("--no-auth")
    assert rc == 2 and "--runs DIR is required" in err
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE other (x)").connection.commit()
    rc, err = serve("--runs", str(runs), "--no-auth", "--jobs-db", str(foreign))
    assert rc == 2 and "not an autointerp job database" in err  # said before anything listens
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    rc, err = serve("--hash-key")
    assert rc == 2 and "got none" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["serve", "--hash-key"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sha256:") and KEY not in out


@pytest.mark.slow
def test_the_command_serves_and_stops_cleanly(runs):
    import os

    port = free_port()
    cmd = [sys.executable, "-m", "autointerp.cli", "serve", "--runs", str(runs), "--port", str(port)]
    env = {**os.environ, "AUTOINTERP_API_KEYS": f"{KEY},{OTHER_KEY}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with Client(f"http://127.0.0.1:{port}", OTHER_KEY) as c:
            assert "alpha" in [r["name"] for r in c.runs()]
            spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
            paths = spec.json()["paths"]
            assert "/runs/{run}/latents/{latent}/score" in paths and "/jobs/{job_id}/events" in paths
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert "Application shutdown complete" in out, out[-2000:]  # (uvicorn then re-raises the SIGTERM)
    assert KEY not in out and OTHER_KEY not in out
