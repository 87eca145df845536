"""Cancelling jobs and resuming their event stream, against a real `autointerp serve` (uvicorn on
127.0.0.1) whose scripted judge holds every request until the test opens a gate, so a job is caught
running or queued by what the test can see, not by timing."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from helpers.report_fixtures import make_run
from helpers.serve_helpers import KEY, OTHER_KEY, DroppingProxy, copy_run, start_server

from autointerp.client import AsyncClient, Client, ServeError
from autointerp.serve.queue import parse_event_id

BOUND_S = 120


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("cancel")
    make_run(root / "runs" / "alpha", tiny_llama, max_latents=3)
    gate = root / "gate"
    server = start_server(root / "runs", root / "state", "--workers", "1", gate=gate)
    yield server, root / "runs" / "alpha", gate
    gate.touch()
    assert server.stop(), server.log.read_text()[-3000:]


def until(client: Client, job_id: str, check) -> dict:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if check(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {client.job(job_id)}")


def events_raw(url: str, job_id: str, last_event_id: str | None = None, first_only: bool = False) -> list[tuple]:
    """(id, event, job) of each event of the stream, read with plain httpx (the ids are what is tested)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    out: list[tuple] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=headers, timeout=BOUND_S) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                out.append((fields["id"], fields["event"], json.loads(fields["data"])))
                if first_only or fields["event"] == "done":
                    break
            fields = {}
    return out


def test_cancel_a_queued_and_a_running_job_and_resume_the_event_stream(served):
    server, folder, gate = served
    labels = {
        r["latent"]: r["explanation"] for r in map(json.loads, (folder / "explanations.jsonl").read_text().splitlines())
    }
    a, b = sorted(labels)[:2]
    with Client(server.url, KEY, timeout=60) as client:
        running = client.score("alpha", a, "a label to cancel", scorers=["detection", "fuzzing"])
        until(client, running["id"], lambda j: (j["progress"] or {}).get("scorer") == "detection")
        queued = client.score("alpha", b, "a label never scored", scorers=["detection"])
        assert client.job(queued["id"])["status"] == "queued"  # one worker, held by the first job

        # the stream gives ids; one that reconnects with an old id gets the job as it is now
        ((first_id, name, job),) = events_raw(server.url, running["id"], first_only=True)
        assert name == "progress" and job["status"] == "running" and parse_event_id(first_id) is not None
        ((again_id, _, _),) = events_raw(server.url, running["id"], last_event_id="0.0", first_only=True)
        assert again_id == first_id  # nothing changed in between

        # a queued job is cancelled at once, and cancelling again changes nothing
        assert client.cancel(queued["id"])["status"] == "cancelled"
        assert client.cancel(queued["id"])["status"] == "cancelled"
        assert [j["id"] for j in client.jobs(status="cancelled")] == [queued["id"]]
        # only its owner can: for anyone else, and for an unknown id, there is no such job
        with Client(server.url, OTHER_KEY) as other, pytest.raises(ServeError) as e:
            other.cancel(running["id"])
        assert e.value.status == 404
        for unknown in ("0123456789abcdef0123456789abcdef", "nonsense"):
            with pytest.raises(ServeError) as e:
                client.cancel(unknown)
            assert e.value.status == 404
        assert httpx.delete(f"{server.url}/jobs/{running['id']}").status_code == 401

        # a running job is asked to stop: answered 202, still running, until its row in flight is written
        response = httpx.delete(f"{server.url}/jobs/{running['id']}", headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 202 and response.json()["status"] == "running"
        gate.touch()
        later = events_raw(server.url, running["id"], last_event_id=first_id)
        ids = [parse_event_id(i) for i, _, _ in later]
        assert ids and all(i > parse_event_id(first_id) for i in ids) and ids == sorted(set(ids))
        assert later[-1][1] == "done" and later[-1][0].endswith(".end")
        ended = later[-1][2]
        assert ended["status"] == "cancelled" and "fuzzing" in ended["error"]
        assert [s["scorer"] for s in ended["result"]["scores"]] == ["detection"]
        assert events_raw(server.url, running["id"], last_event_id=later[-1][0]) == []  # it had it all
        assert list(client.events(running["id"], last_event_id=later[-1][0])) == []
        assert client.cancel(running["id"])["status"] == "cancelled"  # idempotent once finished too
        assert client.job(queued["id"])["status"] == "cancelled" and client.job(queued["id"])["started"] is None

    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    mine = [(r["latent"], r["scorer"]) for r in rows if r["explanation"] == "a label to cancel"]
    assert mine == [(a, "detection")]  # the row in flight was written whole; the next scorer never began
    assert not [r for r in rows if r["explanation"] == "a label never scored"]


def test_the_async_client_cancels_and_follows_too(served):
    import asyncio

    server, folder, gate = served
    gate.touch()

    async def go() -> tuple[dict, list[dict]]:
        async with AsyncClient(server.url, KEY, timeout=60) as client:
            job = await client.score("alpha", 0, "another label", scorers=["detection"])
            seen = [event async for event in client.events(job["id"])]
            return await client.cancel(job["id"]), seen

    cancelled, seen = asyncio.run(go())
    assert seen[-1]["status"] == "done" and cancelled["status"] == "done"  # finished first: left as it was


def test_the_client_resumes_a_dropped_event_stream_after_the_last_event_it_had(served, tmp_path):
    """A stream cut after its first event (a proxy drops the connection): `Client.events` reconnects with
    that event's id, is sent only what came after, and ends with the job's end."""
    _, folder, _ = served
    copy_run(folder, tmp_path / "runs" / "beta")
    gate = tmp_path / "gate"
    server = start_server(tmp_path / "runs", tmp_path / "state", gate=gate)
    proxy = DroppingProxy(int(server.url.rsplit(":", 1)[1]))
    try:
        with Client(server.url, KEY, timeout=60) as client, Client(proxy.url, KEY, timeout=60) as through_proxy:
            job = client.score("beta", 0, "a label followed through a bad line", scorers=["detection"])
            until(client, job["id"], lambda j: (j["progress"] or {}).get("scorer") == "detection")
            events = through_proxy.events(job["id"])
            first = next(events)
            assert first["status"] == "running" and proxy.dropped
            gate.touch()
            rest = list(events)
    finally:
        gate.touch()
        proxy.close()
        assert server.stop(), server.log.read_text()[-3000:]
    assert rest and rest[-1]["status"] == "done" and first not in rest
    streams = [head for head in proxy.heads if "/events" in head.split("\r\n", 1)[0]]
    assert len(streams) == 2 and "last-event-id" not in streams[0].lower()
    assert re.search(r"(?im)^last-event-id: 0*\d+\.\d+\r?$", streams[1]), streams[1]


def test_event_ids_order_by_attempt_then_change_and_the_client_keeps_the_last():
    """What a reconnecting client sends back is the last id it read; ids compare attempt first (a restarted
    server starts counting changes again, in a new attempt), and a finished job's last one comes last."""
    from autointerp.client import _EventParser

    parser = _EventParser()
    for line in ["id: 1.3", "event: progress", 'data: {"status": "running"}', ""]:
        parser.feed(line)
    assert parser.last_id == "1.3"
    assert parse_event_id("2.0") > parse_event_id("1.end") > parse_event_id("1.3") > parse_event_id("0.9")
    assert parse_event_id("garbage") is None and parse_event_id(None) is None
