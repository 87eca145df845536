"""A fault-injecting OpenAI-compatible chat server for tests (no model behind it).

It answers `POST /v1/chat/completions` (and the legacy `POST /v1/completions`, whose `("ok", text)`
echoes the prompt with made-up prompt logprobs when asked: see `echo_body`) with whatever a behaviour
function decides for each request,
so tests can script the failures real servers produce (5xx, 429 with Retry-After, hangs, cut-off
bodies, garbage) and check what the code around the judge does with them:

    def behaviour(request: dict, n: int) -> tuple:   # n counts chat requests from 0
        return ("ok", "Yes", {"Yes": -0.1, "No": -2.4})

    with FaultServer(behaviour) as server:
        judge = OpenAIJudge(base_url=server.url, model="fault")

Actions a behaviour can return:

- `("ok", text)` or `("ok", text, top)`: a proper `chat.completion` with usage; when the request
  asks for `logprobs`, `logprobs.content` holds one entry per token of `text` (split before spaces
  and newlines) and the first token's `top_logprobs` holds `top` (token -> logprob; default: the
  token alone at -0.01), cut to the requested `top_logprobs`; `top` may also be a list, one such
  mapping (or None) per token. The usage reports as `prompt_tokens_details.cached_tokens` the prefix
  (in the same 4-characters-a-token count) the request's messages share with the previous chat
  request's, as a provider's prefix cache would.
- `("length", text)` or `("length", text, top)`: the same, but with `finish_reason: "length"`, as a
  server sends an answer its `max_tokens` cut off (a well-formed reply whose text stops mid-answer).
- `("status", code)` / `("status", code, headers)` / `("status", code, headers, message)`: an
  OpenAI-style error body with that HTTP status and extra headers (e.g. `{"Retry-After": "1"}`).
- `("hang", seconds)`: say nothing for that long, then close the connection without an answer.
- `("truncate",)`: announce a full `ok` body in Content-Length, send half of it and close.
- `("garbage",)`: HTTP 200, `application/json`, a body that is not JSON.
- `("json", obj)`: HTTP 200 with `obj` as the JSON body (e.g. `{"choices": []}`).

`FaultServer.script([...])` makes a behaviour that plays a list of actions in order and then
answers `("ok", default)` for ever. Every chat request is kept in `requests` as
`(monotonic time, request JSON, headers with lower-case names)`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple
Behaviour = Callable[[dict[str, Any], int], Action]


def prompt_text(request: dict[str, Any]) -> str:
    return "".join(f"<{m.get('role')}>{m.get('content', '')}" for m in request.get("messages", []))


def completion_body(
    request: dict[str, Any],
    text: str,
    top: dict[str, float] | list[dict[str, float] | None] | None = None,
    finish_reason: str = "stop",
    cached_chars: int = 0,
) -> dict[str, Any]:
    """A `chat.completion` object answering `request` with `text`, with logprobs when it asks for them."""
    tokens = re.findall(r"\s*\S+", text) or [text]
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    if request.get("logprobs"):
        k = int(request.get("top_logprobs") or 0)
        content = []
        for i, tok in enumerate(tokens):
            given = top[i] if isinstance(top, list) and i < len(top) else (top if i == 0 else None)
            alts = dict(given) if given else {tok: -0.01}
            lp = alts.get(tok, -0.01)
            ranked = sorted(alts.items(), key=lambda kv: -kv[1])[:k]
            content.append(
                {
                    "token": tok,
                    "logprob": lp,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in ranked],
                }
            )
        choice["logprobs"] = {"content": content}
    prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fault"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": len(tokens),
            "total_tokens": max(1, prompt_chars // 4) + len(tokens),
            "prompt_tokens_details": {"cached_tokens": min(cached_chars // 4, max(1, prompt_chars // 4))},
        },
    }


def echo_body(request: dict[str, Any], text: str) -> dict[str, Any]:
    """A `text_completion` answering `request` with `text`; with `echo`, the prompt comes first.

    Tokens are the prompt and the answer split before each space; the logprob of the i-th token is
    -0.1 * (i % 7) - 0.05 (the first echoed one: null, as OpenAI does), and its top alternatives are the
    token itself and "ALT" one nat below, cut to the requested `logprobs`.
    """
    prompt = str(request.get("prompt", ""))
    echo = bool(request.get("echo"))
    full = (prompt if echo else "") + text
    body: dict[str, Any] = {"index": 0, "text": full, "finish_reason": "length", "logprobs": None}
    if request.get("logprobs") is not None:
        k = int(request["logprobs"])
        tokens = re.findall(r"\s*\S+|\s+", prompt) if echo else []
        tokens += re.findall(r"\s*\S+|\s+", text)
        offsets, values, tops, pos = [], [], [], 0
        for i, tok in enumerate(tokens):
            offsets.append(pos)
            pos += len(tok)
            lp = None if (echo and i == 0) else -0.1 * (i % 7) - 0.05
            values.append(lp)
            alts = {tok: lp, "ALT": lp - 1.0} if lp is not None else None
            tops.append(dict(sorted(alts.items(), key=lambda kv: -kv[1])[:k]) if alts else None)
        body["logprobs"] = {"tokens": tokens, "text_offset": offsets, "token_logprobs": values, "top_logprobs": tops}
    return {
        "id": "cmpl-fault",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.get("model", "fault"),
        "choices": [body],
        "usage": {
            "prompt_tokens": max(1, len(prompt) // 4),
            "completion_tokens": 1,
            "total_tokens": max(1, len(prompt) // 4) + 1,
        },
    }


class FaultServer:
    """An OpenAI-compatible server on 127.0.0.1 whose every answer is chosen by `behaviour`."""

    def __init__(self, behaviour: Behaviour | None = None, *, default: str = "OK"):
        self.behaviour: Behaviour = behaviour or (lambda request, n: ("ok", default))
        self.requests: list[tuple[float, dict[str, Any], dict[str, str]]] = []
        self._last_prompt = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def script(actions: Sequence[Action], default: str = "OK") -> Behaviour:
        """A behaviour that plays `actions` in order, then answers `("ok", default)`."""
        queue = list(actions)
        lock = threading.Lock()

        def behaviour(request: dict[str, Any], n: int) -> Action:
            with lock:
                return queue.pop(0) if queue else ("ok", default)

        return behaviour

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL to give an OpenAI client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def times(self) -> list[float]:
        return [t for t, _, _ in self.requests]

    def start(self) -> FaultServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _send_json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send_json(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": "fault", "object": "model", "created": 0, "owned_by": "test"}],
                        },
                    )
                else:
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not self.path.rstrip("/").endswith("/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    self._send_json(400, {"error": {"message": "request body is not JSON", "type": "bad_request"}})
                    return
                with server._lock:
                    n = len(server.requests)
                    server.requests.append((time.monotonic(), request, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    self._act(server.behaviour(request, n), request)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

            def _act(self, action: Action, request: dict[str, Any]) -> None:
                kind = action[0]
                if kind == "ok" and "messages" not in request:  # the legacy completions endpoint
                    self._send_json(200, echo_body(request, action[1]))
                elif kind in ("ok", "length"):
                    top = action[2] if len(action) > 2 else None
                    finish = "length" if kind == "length" else "stop"
                    prompt = prompt_text(request)
                    with server._lock:
                        cached = len(os.path.commonprefix([prompt, server._last_prompt]))
                        server._last_prompt = prompt
                    self._send_json(200, completion_body(request, action[1], top, finish, cached))
                elif kind == "status":
                    code = int(action[1])
                    headers = action[2] if len(action) > 2 and action[2] else {}
                    message = action[3] if len(action) > 3 else f"injected HTTP {code}"
                    self._send_json(code, {"error": {"message": message, "type": "injected", "code": code}}, headers)
                elif kind == "hang":
                    server._stopping.wait(float(action[1]))
                    self.close_connection = True
                elif kind == "truncate":
                    data = json.dumps(completion_body(request, "truncated answer")).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "garbage":
                    data = b'{"id": "chatcmpl-x", "choices": [{"message": <<not json'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif kind == "json":
                    self._send_json(200, action[1])
                else:
                    raise ValueError(f"unknown fault action {action!r}")

        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def openai_response_format_rules(behaviour: Behaviour) -> Behaviour:
    """`behaviour` behind the checks api.openai.com makes of `response_format`, as its API reference
    describes them: `json_object` takes no schema (an unknown parameter) and needs the word JSON in the
    messages; `json_schema` needs `json_schema` with a `name` and a `schema`. A request that breaks them
    is answered HTTP 400 with OpenAI's kind of message, before `behaviour` sees it."""

    def checked(request: dict[str, Any], n: int) -> Action:
        form = request.get("response_format")
        if isinstance(form, dict):
            kind = form.get("type")
            if kind == "json_object":
                extra = sorted(set(form) - {"type"})
                if extra:
                    return ("status", 400, {}, f"Unknown parameter: 'response_format.{extra[0]}'.")
                if "json" not in prompt_text(request).lower():
                    return (
                        "status",
                        400,
                        {},
                        "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                        "'json_object'.",
                    )
            elif kind == "json_schema":
                spec = form.get("json_schema")
                for key in ("name", "schema"):
                    if not isinstance(spec, dict) or key not in spec:
                        return ("status", 400, {}, f"Missing required parameter: 'response_format.json_schema.{key}'.")
            elif kind != "text":
                return (
                    "status",
                    400,
                    {},
                    f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
                )
        return behaviour(request, n)

    return checked
