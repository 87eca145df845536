"""A persistent response cache in front of any `Judge`, so a re-run or a resumed run pays for nothing twice.

`CachedJudge(inner, path, namespace=...)` answers a deterministic request (temperature 0) from an
SQLite file when the very same request was answered before, and otherwise asks `inner` and stores
its reply. The key is the sha256 of a canonical JSON of everything that decides the answer:
the caller's `namespace` (backend and model identity: two models must never share answers), the
messages, max_tokens, temperature, logprobs and schema. Requests with temperature > 0 are samples,
not answers, and always go to `inner` (a re-ask at temperature 0.7 must get a fresh sample).

Prompt logprobs (`prompt_logprobs`, teacher forcing a text) are deterministic too and are cached the
same way, keyed by the namespace, the text, `top_logprobs` and `top_at`; their keys carry a `kind` field that
chat keys do not have, so the two can never collide. A hit counts its tokens in `saved.prompt_tokens`.

Only the reply (text, logprobs with their top alternatives, usage, finish reason) is stored, as JSON, under its key:
never the prompt. A hit comes back with zero usage (it cost nothing this run); what it would have cost
is summed in `saved`. Exceptions of `inner` are never stored.

Concurrency: the sqlite work runs inline on the event loop thread. With WAL, synchronous=NORMAL and
one connection, a lookup by key and an insert with its commit each take less time than the mere
round trip of a call through `asyncio.to_thread`, which would also queue behind other work in the
default executor (the sampler and the llama.cpp judge use it); `bench/response_cache_latency.py`
measures the three. Inline calls are also atomic with respect to
other coroutines, so writes are serialised without an asyncio lock; a threading lock guards the
connection in case a judge is shared across threads. Identical requests in flight at the same time
are coalesced: the first asks `inner`, the others wait for its reply (or its exception).

Durability: every write is its own committed transaction in WAL mode. A killed process loses at most
the reply being written; with synchronous=NORMAL a power cut may drop the last few commits (they are
simply asked again) but never corrupts the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from autointerp.errors import AutointerpError
from autointerp.llm.base import (
    Judge,
    JudgeError,
    Message,
    PromptToken,
    Reply,
    TokenLogprob,
    can_score_text,
)
from autointerp.llm.forwarding import ForwardingJudge
from autointerp.records import Usage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of keys and stored replies; a change makes old entries unreachable, never misread
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


class ResponseCacheError(AutointerpError):
    """The response cache file cannot be used (corrupt, not a cache, or of another format)."""


def cache_key(
    namespace: str,
    messages: list[Message],
    *,
    max_tokens: int,
    temperature: float,
    logprobs: int,
    schema: dict[str, Any] | None,
    grammar: str | None = None,
) -> str:
    """sha256 (hex) of the canonical JSON of a request: sorted keys, no whitespace, ASCII-escaped.
    A grammar enters the key only when given, so the keys of requests without one stay as they were."""
    payload: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "namespace": namespace,
        "messages": [dict(m) for m in messages],
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "logprobs": int(logprobs),
        "schema": schema,
    }
    if grammar is not None:
        payload["grammar"] = grammar
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def prompt_logprobs_key(namespace: str, text: str, *, top_logprobs: int, top_at: Collection[int] | None = None) -> str:
    """sha256 (hex) of a prompt-logprobs request; the `kind` field keeps it apart from every chat key."""
    payload = {
        "v": FORMAT_VERSION,
        "kind": "prompt_logprobs",
        "namespace": namespace,
        "text": text,
        "top_logprobs": int(top_logprobs),
        "top_at": None if top_at is None else sorted(set(top_at)),
    }
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def encode_prompt_tokens(tokens: list[PromptToken]) -> str:
    return json.dumps(
        [{"token": t.token, "offset": t.offset, "logprob": t.logprob, "top": dict(t.top)} for t in tokens],
        ensure_ascii=True,
        separators=(",", ":"),
    )


def decode_prompt_tokens(text: str) -> list[PromptToken]:
    return [
        PromptToken(token=t["token"], offset=t["offset"], logprob=t["logprob"], top=dict(t["top"]))
        for t in json.loads(text)
    ]


def encode_reply(reply: Reply) -> str:
    """A reply as JSON (ASCII-escaped, so tokens that are lone surrogates or odd bytes survive)."""
    data = {
        "text": reply.text,
        "logprobs": None
        if reply.logprobs is None
        else [{"token": t.token, "logprob": t.logprob, "top": dict(t.top)} for t in reply.logprobs],
        "usage": {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "calls": reply.usage.calls,
            "cached_prompt_tokens": reply.usage.cached_prompt_tokens,
        },
        "finish_reason": reply.finish_reason,
    }
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"))


def decode_reply(text: str) -> Reply:
    data = json.loads(text)
    logprobs = (
        None
        if data["logprobs"] is None
        else [TokenLogprob(token=t["token"], logprob=t["logprob"], top=dict(t["top"])) for t in data["logprobs"]]
    )
    # rows stored before finish_reason was kept have none: read as "not known", like a backend that does not say
    return Reply(
        text=data["text"], logprobs=logprobs, usage=Usage(**data["usage"]), finish_reason=data.get("finish_reason")
    )


def _is_corrupt(e: sqlite3.Error) -> bool:
    name = getattr(e, "sqlite_errorname", None)  # Python >= 3.11
    if name is not None:
        return name in _CORRUPT
    return type(e) is sqlite3.DatabaseError  # corruption maps to the bare DatabaseError class


class _Retry:
    """The outcome handed to waiting duplicates when the request they waited on was cancelled."""


_RETRY = _Retry()


class CachedJudge(ForwardingJudge):
    """A `Judge` that answers repeated deterministic requests from a persistent SQLite cache.

    Counters (this object's lifetime; hits + misses + bypassed == requests): `hits` (answered from the
    cache or by an identical request in flight), `misses` (cacheable requests not answered that way: they
    went to `inner`, or shared the failed call of an identical request in flight), `bypassed`
    (temperature > 0, never cached) and `saved`: the stored usage of every hit, i.e. the tokens this run
    did not pay for (`saved.calls` == hits).
    """

    def __init__(self, inner: Judge, path: str | Path, *, namespace: str):
        if not namespace:
            raise ValueError(
                "CachedJudge needs a namespace naming the backend and model, so models never share answers"
            )
        super().__init__([inner])
        self.path = Path(path)
        self.namespace = namespace
        self.hits = 0
        self.misses = 0
        self.bypassed = 0
        self.saved = Usage()
        self._lock = threading.Lock()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._warned_write = False
        self._con: sqlite3.Connection | None = self._open()

    # -- the Judge protocol ---------------------------------------------------------------------------

    # the options by name, not forwarded as they come: every one of them is part of the answer's key
    async def chat(  # type: ignore[override]
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int = 0,
        schema: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> Reply:
        extra = {"grammar": grammar} if grammar is not None else {}
        if temperature != 0:
            self.bypassed += 1
            return await self.inner.chat(
                messages, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs, schema=schema, **extra
            )
        key = cache_key(
            self.namespace,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            logprobs=logprobs,
            schema=schema,
            grammar=grammar,
        )

        async def ask() -> Reply:
            return await self.inner.chat(
                messages, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs, schema=schema, **extra
            )

        return await self._cached(key, ask, encode_reply, self._hit)

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        """The inner judge's prompt logprobs, from the cache when this text was scored before."""
        inner = self.inner
        if not can_score_text(inner):
            raise JudgeError(f"judge {self.model} ({type(inner).__name__}) cannot give prompt logprobs")
        key = prompt_logprobs_key(self.namespace, text, top_logprobs=top_logprobs, top_at=top_at)

        async def ask() -> list[PromptToken]:
            return await inner.prompt_logprobs(text, top_logprobs=top_logprobs, top_at=top_at)

        return await self._cached(key, ask, encode_prompt_tokens, self._hit_tokens)

    async def _cached(
        self, key: str, ask: Callable[[], Awaitable[Any]], encode: Callable[[Any], str], hit: Callable[[str], Any]
    ) -> Any:
        """`hit(stored)` when the key is stored (or an identical request in flight stores it), else `ask()`."""
        while True:
            stored = self._get(key)
            if stored is not None:
                return hit(stored)
            pending = self._inflight.get(key)
            if pending is None:
                break
            # An identical request is being asked right now: wait for its outcome instead of paying twice.
            # shield: our own cancellation must not cancel the shared future.
            waited = await asyncio.shield(pending)
            if isinstance(waited, str):
                return hit(waited)
            if isinstance(waited, BaseException):
                self.misses += 1  # it went to `inner` on our behalf and failed; nothing is stored
                raise waited
            # the request we waited on was cancelled: look again, and ask ourselves if still needed

        self.misses += 1
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        outcome: Any = _RETRY
        try:
            answer = await ask()
            encoded = encode(answer)
            self._put(key, encoded)
            outcome = encoded
            return answer
        except Exception as e:  # handed to waiting duplicates, never stored
            outcome = e
            raise
        finally:  # also on cancellation (outcome stays _RETRY)
            del self._inflight[key]
            done.set_result(outcome)

    async def aclose(self) -> None:
        try:
            with self._lock:
                if self._con is not None:
                    self._con.close()
                    self._con = None
        finally:
            await super().aclose()

    # -- reporting ------------------------------------------------------------------------------------

    @property
    def saved_prompt_tokens(self) -> int:
        return self.saved.prompt_tokens

    @property
    def saved_completion_tokens(self) -> int:
        return self.saved.completion_tokens

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "bypassed": self.bypassed,
            "saved_prompt_tokens": self.saved.prompt_tokens,
            "saved_completion_tokens": self.saved.completion_tokens,
        }

    def summary(self) -> str:
        return (
            f"response cache {self.path}: {self.hits} hits, {self.misses} misses, {self.bypassed} uncached "
            f"(temperature > 0); saved {self.saved.prompt_tokens:,} prompt + "
            f"{self.saved.completion_tokens:,} completion tokens"
        )

    def stored(self) -> int:
        """Number of stored replies (all namespaces). Not `__len__`: an empty cache must stay truthy."""
        with self._lock:
            row = self._execute("SELECT count(*) FROM replies").fetchone()
        return int(row[0])

    # -- sqlite ---------------------------------------------------------------------------------------

    def _hit(self, encoded: str) -> Reply:
        reply = decode_reply(encoded)
        self.hits += 1
        self.saved.add(replace(reply.usage, calls=1))
        reply.usage = Usage()
        return reply

    def _hit_tokens(self, encoded: str) -> list[PromptToken]:
        tokens = decode_prompt_tokens(encoded)
        self.hits += 1
        self.saved.add(Usage(prompt_tokens=len(tokens), completion_tokens=0, calls=1))
        return tokens

    def _error(self, e: sqlite3.Error) -> ResponseCacheError:
        if _is_corrupt(e):
            return ResponseCacheError(
                f"the response cache {self.path} is corrupt ({e}); delete it (with its -wal and -shm files, if "
                f"any) to start with an empty cache, or run with --no-cache"
            )
        return ResponseCacheError(f"response cache {self.path}: {e}")

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                con.execute("BEGIN IMMEDIATE")
                con.execute(
                    "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL) WITHOUT ROWID"
                )
                con.execute(f"PRAGMA user_version={FORMAT_VERSION}")
                con.execute("COMMIT")
            elif version != FORMAT_VERSION or "replies" not in tables:
                con.close()
                raise ResponseCacheError(
                    f"{self.path} is not an autointerp response cache of format {FORMAT_VERSION} "
                    f"(user_version {version}, tables {sorted(tables)}); delete it or run with --no-cache"
                )
        except sqlite3.Error as e:
            con.close()
            raise self._error(e) from e
        return con

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._con is None:
            raise ResponseCacheError(f"response cache {self.path} is closed")
        return self._con.execute(sql, params)

    def _get(self, key: str) -> str | None:
        try:
            with self._lock:
                row = self._execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise self._error(e) from e
        return None if row is None else row[0]

    def _put(self, key: str, encoded: str) -> None:
        try:
            with self._lock:
                self._execute("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", (key, encoded))
        except sqlite3.Error as e:
            if _is_corrupt(e):
                raise self._error(e) from e
            # Disk full, read-only or locked for 30 s: the answer was paid for, so hand it back uncached.
            if not self._warned_write:
                self._warned_write = True
                log.warning("could not write to the response cache %s (%s); replies are not being cached", self.path, e)
