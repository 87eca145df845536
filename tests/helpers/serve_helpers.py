"""Start and stop real `autointerp serve` processes (with scripted judges) for the tests and the bench."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SCRIPT = Path(__file__).resolve().parent / "serve_scripted.py"
KEY = "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"  # in the key file as it is
OTHER_KEY = "test-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbb"  # in the key file as its sha256: line only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_keys(path: Path) -> Path:
    from autointerp.serve.auth import digest_line

    path.write_text(f"# test keys\n{KEY}\n{digest_line(OTHER_KEY)}\n")
    return path


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    calls: Path

    def judge_calls(self, judge: str = "scripted-judge") -> list[dict]:
        """What the judge was asked, in order: {"sha": of the request, "temperature": ...} each."""
        if not self.calls.exists():
            return []
        return [d for d in map(json.loads, self.calls.read_text().splitlines()) if d["judge"] == judge]

    def stop(self) -> bool:
        """SIGTERM; whether the server shut down cleanly (uvicorn re-raises the signal once it has, so the
        exit status is -SIGTERM either way: its log says whether the shutdown completed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return False
        return "Application shutdown complete" in self.log.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start_server(
    runs: Path,
    state: Path,
    *options: str,
    delay: float = 0.0,
    port: int | None = None,
    no_auth: bool = False,
    timeout: float = 120.0,
    gate: Path | None = None,
) -> Server:
    """A server on 127.0.0.1 serving `runs`, its job table, response cache and logs in `state`."""
    state.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log, calls = state / f"server-{port}.log", state / "judge-calls.jsonl"
    auth = ["--no-auth"] if no_auth else ["--api-keys", str(write_keys(state / "keys.txt"))]
    cmd = [sys.executable, str(SCRIPT), "--delay", str(delay), "--calls-log", str(calls)]
    cmd += [*(["--gate", str(gate)] if gate is not None else []), "--"]
    cmd += ["--runs", str(runs), "--port", str(port), "--jobs-db", str(state / "jobs.sqlite")]
    cmd += ["--response-cache", str(state / "responses.sqlite"), *auth, *options]
    env = {**os.environ, "AUTOINTERP_API_KEYS": ""}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log, calls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def copy_run(source: Path, target: Path, *, keep_scores: bool = False) -> Path:
    """A copy of a run folder (cache and explanations), without its scores unless asked."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report", "hub"))
    if not keep_scores:
        for name in ("scores.jsonl", "results.parquet", "judgments.parquet"):
            (target / name).unlink(missing_ok=True)
    return target


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 to a local server that cuts the first event stream it carries right after
    that stream's first event, as a dropped connection would (every other connection it carries whole).
    `heads` holds the request head of each connection, in order."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.heads: list[str] = []
        self.dropped = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        head = client.recv(65536)  # a GET's head, on a fresh connection
        self.heads.append(head.decode(errors="replace"))
        upstream.sendall(head)
        cut = b"/events" in head.split(b"\r\n", 1)[0] and not self.dropped
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        seen = b""
        try:
            while data := upstream.recv(65536):
                if not cut:
                    client.sendall(data)
                    continue
                seen += data
                start = seen.find(b"data:")
                end = seen.find(b"\n\n", start) if start >= 0 else -1
                if end >= 0:  # the first event is whole: send it, and not a byte more
                    self.dropped = True  # before it is sent: the client may read it before this thread goes on
                    client.sendall(seen[: end + 2])
                    return
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
