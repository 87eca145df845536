"""The service's client follows the shared retry policy against a real HTTP server that answers a scripted
list of statuses: what it retries, the Retry-After it honours (seconds or an HTTP date), the one it
refuses to wait for, and the bound on attempts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autointerp.client import Client, ServeError


class Scripted(ThreadingHTTPServer):
    """Answers each GET with the next (status, headers) of its script, then 200 for ever. Headers may be
    a function, called as the answer is sent (a Retry-After date must be written then, not before)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, dict[str, str] | Callable[[], dict[str, str]]]] = []
        self.times: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.times.append(time.monotonic())
        status, headers = self.server.script.pop(0) if self.server.script else (200, {})
        headers = headers() if callable(headers) else headers
        body = json.dumps({"status": "ok"} if status == 200 else {"error": f"scripted {status}"}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def test_overloaded_answers_are_retried_until_one_succeeds(server):
    server.script = [(503, {}), (502, {}), (500, {})]
    with Client(server.url) as c:
        assert c.health() == {"status": "ok"}
    assert len(server.times) == 4


def test_attempts_are_bounded_by_retries(server):
    server.script = [(503, {})] * 10
    with Client(server.url, retries=2) as c, pytest.raises(ServeError) as e:
        c.health()
    assert e.value.status == 503 and len(server.times) == 3


def test_client_errors_are_not_retried(server):
    server.script = [(404, {}), (200, {})]
    with Client(server.url) as c, pytest.raises(ServeError) as e:
        c.health()
    assert e.value.status == 404 and len(server.times) == 1


def test_retry_after_as_an_http_date_is_waited_out(server):
    # the server writes "now + 2 s" as it answers: a date written before the client was made could have
    # passed by the time a busy machine sent the request
    server.script = [(429, lambda: {"Retry-After": formatdate(time.time() + 2, usegmt=True)})]
    with Client(server.url) as c:
        assert c.health() == {"status": "ok"}
    # the date has whole seconds: the wait is 1 to 2 s, far above the 0.25 s backoff it replaces
    assert len(server.times) == 2 and server.times[1] - server.times[0] >= 0.9


def test_a_wait_longer_than_the_client_sits_through_is_cut_to_its_cap():
    """The queue may ask for minutes: the client asks again after at most its cap, as it always did."""
    from autointerp.client import BACKOFF_MAX, _pause, _policy

    failure = ServeError(429, "queue full", retry_after=3600)
    wait = _pause(failure, 0, _policy(3), time.monotonic())
    assert BACKOFF_MAX <= wait <= BACKOFF_MAX + 1
    with pytest.raises(ServeError):
        _pause(failure, 3, _policy(3), time.monotonic())  # the last attempt: raised
