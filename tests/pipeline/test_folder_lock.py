"""Two writers on one run folder, as real processes: a second `autointerp score` is refused naming the
first (exit 2), or with --wait starts once the first has ended; a service job waits for a command, and a
command is refused while a job writes. In the end every score row is in the log once, whole.

Nothing here waits on a guess of how long something takes: the judges hold their first answer until the
test opens a gate, and the test waits (with a bound) for what it can see: a request arrived, a line printed,
a job's progress."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers.fault_server import FaultServer
from helpers.report_fixtures import make_run
from helpers.serve_helpers import KEY, copy_run, start_server

from autointerp.client import Client
from autointerp.folder_lock import HOLDER_NAME, FolderBusy, FolderLock, Holder, read_holder

BOUND_S = 120  # the longest any step may take on a busy machine before the test fails


@pytest.fixture(scope="module")
def explained(tmp_path_factory, tiny_llama) -> Path:
    """A run folder explained and scored by the pipeline; tests score copies of it without their scores."""
    return make_run(tmp_path_factory.mktemp("lock") / "alpha", tiny_llama, max_latents=3)


class GatedJudge:
    """An OpenAI-compatible judge (FaultServer) that says Yes or No by the excerpt, and holds its first
    answer until `open()`; `entered` is set once that first request has arrived."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.server = FaultServer(self.behaviour)

    def behaviour(self, request: dict, n: int) -> tuple:
        if n == 0:
            self.entered.set()
            self.gate.wait(BOUND_S)
        yes = len(json.dumps(request)) % 2 == 0
        return ("ok", "Yes" if yes else "No", {"Yes": -0.3 if yes else -1.4, "No": -1.4 if yes else -0.3})

    def open(self) -> None:
        self.gate.set()


def score_command(folder: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autointerp.cli",
        "score",
        "--out",
        str(folder),
        "--judge",
        "openai:fault",
        "--judge-url",
        url,
        "--max-latents",
        "3",
        "--scorers",
        "detection",
        "--controls",
        "none",
        "--no-cache",
        "--quiet",
        *extra,
    ]


ENV = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}


def started(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_of(stream) -> queue.Queue:
    """The stream's lines as they come, read in a thread (so a test can wait for one with a bound)."""
    out: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            out.put(line)
        out.put(None)

    threading.Thread(target=read, daemon=True).start()
    return out


def wait_for_line(lines: queue.Queue, text: str) -> str:
    deadline = time.monotonic() + BOUND_S
    seen = []
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} in {seen}")


def score_rows(folder: Path) -> list[dict]:
    """Every line of scores.jsonl, each of which must be one whole JSON row, and none twice."""
    text = (folder / "scores.jsonl").read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]  # a line two writers mixed would not parse
    keys = Counter((r["latent"], r["scorer"], r["explanation"], r["judge_model"], r.get("donor")) for r in rows)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    return rows


def test_a_second_score_is_refused_naming_the_first_and_with_wait_runs_after_it(explained, tmp_path):
    folder = copy_run(explained, tmp_path / "run")
    judge = GatedJudge()
    with judge.server as server:
        first = started(score_command(folder, server.url))
        try:
            assert judge.entered.wait(BOUND_S), first.communicate()[1][-3000:]  # it holds the folder now
            holder = read_holder(folder / HOLDER_NAME)
            assert holder is not None and holder.pid == first.pid and "autointerp score --out" in holder.command

            second = subprocess.run(score_command(folder, server.url), env=ENV, capture_output=True, text=True)
            assert second.returncode == 2, second.stderr
            (message,) = [line for line in second.stderr.splitlines() if line.startswith("autointerp: error:")]
            assert f"pid {first.pid} on " in message and "autointerp score --out" in message and "--wait" in message

            waiting = started(score_command(folder, server.url, "--wait"))
            wait_for_line(lines_of(waiting.stdout), f"waiting for pid {first.pid} on ")
            assert first.poll() is None and waiting.poll() is None
            judge.open()
            _, err = first.communicate(timeout=BOUND_S)
            assert first.returncode == 0, err[-3000:]
            _, err = waiting.communicate(timeout=BOUND_S)
            assert waiting.returncode == 0, err[-3000:]
        finally:
            judge.open()
            for proc in (first, locals().get("waiting")):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    rows = score_rows(folder)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)  # the waiting one found them done
    assert not (folder / HOLDER_NAME).exists()


def test_a_service_job_and_a_command_on_one_folder_leave_every_row_once(explained, tmp_path):
    root = tmp_path / "runs"
    folder = copy_run(explained, root / "shared")
    gate = tmp_path / "service-gate"
    server = start_server(root, tmp_path / "state", gate=gate)
    judge = GatedJudge()
    try:
        with Client(server.url, KEY, timeout=60) as client, judge.server as fault:
            labels = {
                int(r["latent"]): r["explanation"]
                for r in map(json.loads, (folder / "explanations.jsonl").read_text().splitlines())
            }
            first, second = sorted(labels)[:2]

            # a job writes (its judge held at the gate): a command is refused, naming the service
            job = client.score("shared", first, labels[first], scorers=["detection"])
            progress_is(client, job["id"], "scoring")
            refused = subprocess.run(score_command(folder, fault.url), env=ENV, capture_output=True, text=True)
            assert refused.returncode == 2, refused.stderr
            assert f"pid {server.proc.pid} on " in refused.stderr and "HTTP service jobs" in refused.stderr
            gate.touch()
            assert client.wait(job["id"], timeout=BOUND_S)["status"] == "done"
            service_idle(folder)

            # a command writes (its judge held): a job waits for it, saying who it waits for, then runs
            command = started(score_command(folder, fault.url))
            assert judge.entered.wait(BOUND_S), command.communicate()[1][-3000:]
            job = client.score("shared", second, labels[second], scorers=["detection"])
            seen = progress_is(client, job["id"], "waiting for the run folder")
            assert f"pid {command.pid} on " in seen["holder"]
            assert client.job(job["id"])["status"] == "running"
            judge.open()
            _, err = command.communicate(timeout=BOUND_S)
            assert command.returncode == 0, err[-3000:]
            assert client.wait(job["id"], timeout=BOUND_S)["status"] == "done"
    finally:
        judge.open()
        gate.touch()
        assert server.stop(), server.log.read_text()[-3000:]
    rows = score_rows(folder)
    # the command resumed past the latent the first job had scored; the second job's latent had its score
    # by the command's judge, and the job added its own judge's
    assert Counter(r["judge_model"] for r in rows) == {"fault": 2, "scripted-judge": 2}
    assert all(r["status"] == "ok" for r in rows)


def service_idle(folder: Path) -> None:
    """Once the service has rebuilt the results tables after its job, it holds the folder no more."""
    deadline = time.monotonic() + BOUND_S
    while not (folder / "results.parquet").exists() or (folder / HOLDER_NAME).exists():
        assert time.monotonic() < deadline, "the service still holds the folder"
        time.sleep(0.05)


def progress_is(client: Client, job_id: str, stage: str) -> dict:
    """The job's progress once it reaches `stage` (within the bound)."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        job = client.job(job_id)
        progress = job.get("progress") or {}
        if progress.get("stage") == stage:
            return progress
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {stage!r}: {client.job(job_id)}")


def test_a_command_killed_while_it_holds_the_folder_blocks_nobody(explained, tmp_path):
    """SIGKILL gives the holder no chance to let go or to remove its holder file: the OS lets go for it, and
    the next command takes the folder at once and finishes the work."""
    folder = copy_run(explained, tmp_path / "run")
    judge = GatedJudge()
    with judge.server as server:
        first = started(score_command(folder, server.url))
        try:
            assert judge.entered.wait(BOUND_S), first.communicate()[1][-3000:]
        finally:
            first.kill()
            first.wait(BOUND_S)
        assert read_holder(folder / HOLDER_NAME).pid == first.pid  # left behind, and not believed
        judge.open()
        again = subprocess.run(score_command(folder, server.url), env=ENV, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
    assert len(score_rows(folder)) == 3 and not (folder / HOLDER_NAME).exists()


# -- the lock itself, in one process ------------------------------------------------------------------


def test_a_holder_that_died_does_not_block_and_its_file_is_not_believed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process of this host that has ended
    import socket

    stale = Holder(pid, socket.gethostname(), "autointerp score --out x", time.time() - 3600)
    (folder / HOLDER_NAME).write_text(json.dumps(stale.__dict__))
    lock = FolderLock(folder, command="me")
    assert lock.holder() is None  # the file names a process that is gone
    with lock.hold():
        assert read_holder(folder / HOLDER_NAME).command == "me"  # the live holder's file replaced it
        other = FolderLock(folder, command="other")
        with pytest.raises(FolderBusy, match=rf"pid {os.getpid()} on .*\(me\), since "):
            other.acquire()
        with lock.hold():  # reentrant for its holder
            pass
        assert not other.try_acquire()
    assert not (folder / HOLDER_NAME).exists() and other.try_acquire()
    other.release()
