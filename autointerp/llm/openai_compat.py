"""A judge behind any OpenAI-compatible chat API: OpenAI, vLLM's server, llama.cpp's server, OpenRouter.

Built on the official `openai` client (`AsyncOpenAI`) with the client's own retries turned off
(`max_retries=0`), so the retry policy (retry_policy.py, shared with the service's client) is the only one:

- retried, with exponential backoff and jitter: timeouts, connection errors (including a
  body cut off mid-transfer), HTTP 408, 429 and 5xx. On 429 and 503 a `Retry-After` header (seconds
  or an HTTP date; also OpenAI's `retry-after-ms`) replaces the backoff for that wait; one asking for
  more than `max_retry_after` seconds ends the call at once (a daily quota will not clear in a minute).
  A request that timed out is retried only after waiting at least as long as the timeout: the server
  (llama.cpp's, say) goes on working on an abandoned request, and a retry sent at once would queue
  behind it and time out in turn. Attempts are bounded (`max_attempts`), and so is the time: no retry
  starts when the time since the first attempt plus the coming wait would pass `max_total_s`
  (default: three timeouts, at least 300 s). (501 Not Implemented is not retried.)
- not retried, `JudgeError` at once: other 4xx (400 bad request, 401 "check the API key in $NAME",
  403, 404 unknown model or endpoint, ...), and a 200 reply that is unusable: a body that is not JSON,
  no choices, a message with no content, no logprobs when they were asked for. The scorers already
  re-ask a judge a bounded number of times and count the failure, so retrying here too would only
  multiply the calls; a body cut off in transit, on the other hand, is a transport fault and retried.
- after the last attempt: `JudgeError` naming the status code (or timeout / connection error),
  the server's message and the number of attempts.

The API key is read from the environment variable named by `api_key_env` when the client is made;
the judge never keeps it in an attribute of its own, its repr names only the variable, pickling
drops the client (the copy reads the variable again), and every error message is built by this
module with the key scrubbed, never chained to the client's exception (which holds the request
and its Authorization header). A server that needs no key (llama.cpp, a local vLLM) works with the
variable unset.

JSON output: `schema` becomes `response_format={"type": "json_object", "schema": schema}`, which
llama.cpp's server and vLLM constrain to; llama.cpp answers HTTP 500 to `"json_schema"`, which is
what OpenAI itself wants (and it refuses a `schema` inside `json_object`): `schema_mode="json_schema"`
(`strict_schema` for its strict mode), or `"none"` to leave output unconstrained for servers that
accept neither. `schema_mode_for("auto", url)` picks by server: json_schema for api.openai.com,
json_object with the schema elsewhere.

Grammars: a server that takes a GBNF grammar in a request-body field (llama.cpp's server reads
`grammar`) gets one when the judge is made with `grammar_field` naming that field; otherwise the judge
claims no `supports_grammar` and callers send the request unconstrained.

Prompt logprobs (`prompt_logprobs`, for the surprisal and simulation scorers): the legacy
`/completions` endpoint with `echo=True`, `logprobs=k` and `max_tokens=1` (some servers read 0 as "no
limit"), the generated token trimmed off by its `text_offset`. Few servers still offer it (vLLM does;
llama-cpp-python's server does with `--logits_all True`; OpenAI's chat models do not), so the judge
only claims it when made with `supports_prompt_logprobs=True`. llama-cpp-python 0.3.36's server
pairs each echoed token with the logits *at* that token (the next token's distribution) when the
model adds no BOS token (SmolLM2, Qwen2.5): its values are then off by one position, which no client
can repair (tests/llm/test_llm_openai.py pins this).

`max_concurrency` bounds the calls in flight from this judge (an `asyncio.Semaphore`, held across a
call's retries so a rate-limited server is not hit harder while it asks us to back off);
`timeout` bounds each attempt, including a server that trickles bytes. Its default,
`DEFAULT_TIMEOUT_S`, is sized for a busy local server rather than a hosted API, which can take
minutes over a long explainer prompt on a few CPU cores (the README gives a measured case).

`check()` is a cheap test that the server is there before a run starts: the models list (or, when the
server has none or does not list the model, one 1-token chat), a few quick attempts, and an error
naming the URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from autointerp.errors import ConfigError, MissingPackageError
from autointerp.llm.base import JudgeError, Message, PromptToken, Reply, TokenLogprob
from autointerp.records import Usage
from autointerp.retry_policy import RetryPolicy
from autointerp.retry_policy import parse_retry_after as parse_retry_after  # where callers have read it

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_NO_KEY = "sk-no-key-set"  # what the client sends when the variable is unset (llama.cpp ignores it)
DEFAULT_TIMEOUT_S = 300.0  # per attempt: twice the slowest answer measured from a busy local server
CHECK_TIMEOUT_S = 20.0  # per attempt of `check()`: listing models is quick even on a busy server

SchemaMode = Literal["json_object", "json_schema", "none"]
# servers known to refuse a schema inside json_object and to want OpenAI's json_schema form
JSON_SCHEMA_HOSTS = frozenset({"api.openai.com"})


def schema_mode_for(mode: str, base_url: str | None) -> SchemaMode:
    """The response_format a server gets for `--schema-mode MODE`: an explicit mode as it is; `auto`, the
    form the server accepts. OpenAI wants json_schema (and refuses json_object with a schema); llama.cpp's
    server answers json_schema with HTTP 500 and vLLM constrains to json_object's schema, so every other
    server gets json_object with the schema."""
    if mode != "auto":
        if mode not in ("json_object", "json_schema", "none"):
            raise ConfigError(f"--schema-mode must be auto, json_schema, json_object or none, not {mode!r}")
        return mode  # type: ignore[return-value]
    host = urlsplit(base_url or DEFAULT_BASE_URL).hostname or ""
    return "json_schema" if host in JSON_SCHEMA_HOSTS else "json_object"


class OpenAIJudgeError(JudgeError):
    """A `JudgeError` from an OpenAI-compatible server; `status` is the HTTP status when there was one;
    `unusable` is True when the server did answer (HTTP 200) but with a reply that cannot be used."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1, unusable: bool = False):
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.unusable = unusable


class _Retryable(Exception):
    """One failed attempt worth another try (internal: never leaves this module)."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None, timed_out: bool = False
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as e:
        raise MissingPackageError(f"the OpenAI-compatible judge needs openai: {INSTALL_HINT}") from e
    return openai


def _public_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


class OpenAIJudge:
    """A `Judge` backed by an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        supports_logprobs: bool = True,
        supports_prompt_logprobs: bool = False,
        schema_mode: SchemaMode = "json_object",
        strict_schema: bool = False,
        max_concurrency: int = 8,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 6,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        max_total_s: float | None = None,
        token_limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        extra_body: dict[str, Any] | None = None,
        grammar_field: str | None = None,
    ):
        _import_openai()
        if schema_mode not in ("json_object", "json_schema", "none"):
            raise ValueError(f"schema_mode must be 'json_object', 'json_schema' or 'none', not {schema_mode!r}")
        if token_limit_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"token_limit_field must be 'max_tokens' or 'max_completion_tokens', not {token_limit_field!r}"
            )
        if max_concurrency < 1 or max_attempts < 1 or timeout <= 0:
            raise ValueError("max_concurrency and max_attempts must be >= 1 and timeout > 0")
        if not api_key_env or not api_key_env.replace("_", "").isalnum():
            # a guard against passing the key itself where its variable's name belongs
            raise ConfigError("api_key_env must be the NAME of an environment variable (letters, digits, _)")
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.supports_logprobs = supports_logprobs
        self.supports_prompt_logprobs = supports_prompt_logprobs
        self.schema_mode: SchemaMode = schema_mode
        self.strict_schema = strict_schema
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_attempts = max_attempts
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        # by default room for a timed-out attempt, the wait after it and one more attempt
        self.max_total_s = float(max_total_s) if max_total_s is not None else max(300.0, 3 * self.timeout)
        self.token_limit_field = token_limit_field
        self.extra_body = dict(extra_body or {})
        self.grammar_field = grammar_field
        self.supports_grammar = grammar_field is not None
        self.stats = {"calls": 0, "attempts": 0, "retries": 0, "errors": 0}
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what may be shown or copied -------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(model={self.model!r}, base_url={_public_url(self.base_url)!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_client=None, _sem=None, _loop=None)  # the client holds the key: never copied
        return state

    def describe(self) -> dict[str, Any]:
        """Provenance for results and configs (no key, no client)."""
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": _public_url(self.base_url),
            "api_key_env": self.api_key_env,
            "schema_mode": self.schema_mode,
            "supports_logprobs": self.supports_logprobs,
            "supports_prompt_logprobs": self.supports_prompt_logprobs,
        }

    # -- client per event loop -------------------------------------------------------------------

    def _ensure_client(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._sem is None:
            # an httpx pool is bound to the loop it was made on: a new asyncio.run() needs its own
            openai = _import_openai()
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=os.environ.get(self.api_key_env) or _NO_KEY,
                max_retries=0,
                timeout=self.timeout,
            )
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._client, self._sem

    def _scrub(self, text: str, limit: int = 500) -> str:
        text = str(text)
        key = os.environ.get(self.api_key_env)
        client_key = getattr(self._client, "api_key", None) if self._client is not None else None
        for secret in (key, client_key):
            if isinstance(secret, str) and len(secret) >= 4 and secret != _NO_KEY:
                text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    # -- the Judge protocol ----------------------------------------------------------------------

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int = 0,
        schema: dict[str, Any] | None = None,
        grammar: str | None = None,
    ) -> Reply:
        if grammar is not None and self.grammar_field is None:
            raise ValueError(f"judge {self.model} was made without a grammar_field; do not send a grammar")
        if logprobs and not self.supports_logprobs:
            raise ValueError(f"judge {self.model} was made with supports_logprobs=False; do not ask for logprobs")
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            self.token_limit_field: max_tokens,
        }
        if logprobs:
            params.update(logprobs=True, top_logprobs=int(logprobs))
        if schema is not None and self.schema_mode == "json_object":
            params["response_format"] = {"type": "json_object", "schema": schema}
        elif schema is not None and self.schema_mode == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": self.strict_schema},
            }
        extra_body = dict(self.extra_body)
        if grammar is not None and self.grammar_field is not None:
            extra_body[self.grammar_field] = grammar
        if extra_body:
            params["extra_body"] = extra_body

        client, sem = self._ensure_client()
        self.stats["calls"] += 1
        error: OpenAIJudgeError | None = None
        async with sem:
            try:
                return await self._with_retries(
                    lambda: client.chat.completions.create(**params), lambda response: self._reply(response, logprobs)
                )
            except OpenAIJudgeError as e:
                error = e
        # raised outside the except block, so no client exception rides along in __context__
        self.stats["errors"] += 1
        raise error

    async def check(self, attempts: int = 3) -> None:
        """Fail fast, naming the URL, when the server cannot be reached, refuses the key or does not
        know the model; a run calls this once before its first latent instead of failing every latent
        after minutes of retries. Asks the models list; a server without one, or that does not list
        this model (llama.cpp's answers to any name), gets one 1-token chat instead. A reply it
        cannot use still shows the server is there."""
        openai = _import_openai()
        client, _ = self._ensure_client()
        where = f"{self.model} at {_public_url(self.base_url)}"
        problem, fatal, listed = "", None, None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(float(attempt))
            try:
                page = await asyncio.wait_for(client.models.list(timeout=CHECK_TIMEOUT_S), CHECK_TIMEOUT_S + 5)
                listed = {getattr(m, "id", None) for m in getattr(page, "data", None) or []}
                break
            except (asyncio.TimeoutError, openai.APITimeoutError):
                problem = f"no answer within {CHECK_TIMEOUT_S:g} s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                problem = self._scrub(f"connection error: {type(cause).__name__}: {cause}")
            except openai.APIStatusError as e:
                failure = self._status_failure(e)
                if isinstance(failure, _Retryable):
                    problem = failure.reason
                    continue
                if getattr(failure, "status", None) in (401, 403):
                    fatal = failure
                break  # no models route (404, 405...): the chat below decides
            except (ValueError, TypeError, openai.OpenAIError):
                break  # a models list this client cannot read: the chat below decides
        else:
            fatal = OpenAIJudgeError(
                f"cannot reach the judge {where} ({attempts} attempts): {problem}; is the server running "
                f"and the URL (--judge-url) right?"
            )
        if fatal is not None:
            raise fatal  # outside the except blocks: the client's exception (and request) is not chained
        if listed is not None and self.model in listed:
            return
        try:
            await self.chat([{"role": "user", "content": "Say OK."}], max_tokens=1)
        except OpenAIJudgeError as e:
            # a server that answered, however oddly, is there: its answers are the scorers' to judge
            if not e.unusable:
                fatal = OpenAIJudgeError(
                    f"the judge failed its first request: {e}", status=e.status, attempts=e.attempts
                )
        if fatal is not None:
            raise fatal

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        """Every token of `text` with its logprob, from the completions endpoint echoing the prompt."""
        where = f"{self.model} at {_public_url(self.base_url)} (OpenAI-compatible backend)"
        if not self.supports_prompt_logprobs:
            raise JudgeError(
                f"{where} was made without prompt logprobs: pass supports_prompt_logprobs=True "
                f"(--prompt-logprobs) if the server echoes them (vLLM; llama-cpp-python's server with "
                f"--logits_all True)"
            )
        if not text:
            return []
        params: dict[str, Any] = {
            "model": self.model,
            "prompt": text,
            "echo": True,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": max(1, int(top_logprobs)),
        }
        if self.extra_body:
            params["extra_body"] = self.extra_body
        client, sem = self._ensure_client()
        self.stats["calls"] += 1
        error: OpenAIJudgeError | None = None
        async with sem:
            try:
                wanted = None if top_at is None else set(top_at)
                return await self._with_retries(
                    lambda: client.completions.create(**params),
                    lambda response: self._prompt_tokens(response, text, top_logprobs, wanted),
                )
            except OpenAIJudgeError as e:
                error = OpenAIJudgeError(
                    f"{e} (while asking for prompt logprobs: completions with echo=True; a "
                    f"server that cannot give them needs the judge made without "
                    f"--prompt-logprobs)",
                    status=e.status,
                    attempts=e.attempts,
                )
        self.stats["errors"] += 1
        raise error

    def _prompt_tokens(self, response: Any, text: str, k: int, top_at: Collection[int] | None) -> list[PromptToken]:
        """The echoed prompt's tokens, offsets and logprobs; generated tokens (at or past the end) dropped."""
        where = f"{self.model} at {_public_url(self.base_url)}"
        choices = getattr(response, "choices", None)
        lp = getattr(choices[0], "logprobs", None) if choices else None
        tokens = list(getattr(lp, "tokens", None) or [])
        offsets = list(getattr(lp, "text_offset", None) or [])
        values = list(getattr(lp, "token_logprobs", None) or [])
        tops = list(getattr(lp, "top_logprobs", None) or [])
        if not tokens or len(offsets) != len(tokens) or len(values) != len(tokens):
            raise OpenAIJudgeError(
                f"{where}: the completion echoes no prompt logprobs (tokens, text_offset and "
                f"token_logprobs of one length); this server may not support echo=True"
            )
        tops += [None] * (len(tokens) - len(tops))
        shift = 0
        if len(tokens) > 1 and (
            tokens[0] == "" or (not text.startswith(tokens[0]) and "".join(tokens[1:]).startswith(text))
        ):
            # a leading special token the text does not spell (a BOS echoed as "<s>"): not part of the text
            shift = offsets[1] if offsets[1] == len(tokens[0]) else 0
            tokens, offsets, values, tops = tokens[1:], offsets[1:], values[1:], tops[1:]
        out: list[PromptToken] = []
        for token, offset, value, top in zip(tokens, offsets, values, tops, strict=True):
            offset = int(offset) - shift
            if offset >= len(text):
                break  # the generated token
            alts: dict[str, float] = {}
            wanted = top_at is None or offset in top_at
            for alt, v in sorted((top or {}).items() if wanted else (), key=lambda kv: -kv[1])[: max(0, k)]:
                alts[alt] = float(v)
            out.append(
                PromptToken(token=token, offset=offset, logprob=None if value is None else float(value), top=alts)
            )
        if out and out[0].offset != 0:
            raise OpenAIJudgeError(
                f"{where}: the echoed tokens do not start at the text's first character (offset {out[0].offset})"
            )
        return out

    def retry_policy(self) -> RetryPolicy:
        """This judge's patience, in the terms every HTTP caller retries by."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            max_retry_after=self.max_retry_after,
            max_total_s=self.max_total_s,
        )

    async def _with_retries(self, request: Callable[[], Awaitable[Any]], parse: Callable[[Any], Any]) -> Any:
        """The request, sent again as the retry policy says; `OpenAIJudgeError` once it says to give up."""
        policy = self.retry_policy()
        start = time.monotonic()
        for attempt in itertools.count():
            try:
                return await self._attempt(request, parse)
            except _Retryable as e:
                last = e
            # the policy counts time from the first attempt's start to this attempt's end
            floor = self.timeout if last.timed_out else 0.0
            wait = policy.next_wait(attempt, time.monotonic() - start, last.retry_after, at_least=floor)
            if wait is None:
                break
            self.stats["retries"] += 1
            log.warning(
                "%s at %s: %s; attempt %d/%d failed, retrying in %.2f s",
                self.model,
                _public_url(self.base_url),
                last.reason,
                attempt + 1,
                self.max_attempts,
                wait,
            )
            await asyncio.sleep(wait)
        attempts = attempt + 1
        elapsed = time.monotonic() - start
        where = f"{self.model} at {_public_url(self.base_url)}"
        asked = last.retry_after
        if asked is not None and policy.refuses(asked):
            msg = (
                f"{where}: {last.reason}; the server asks to retry after {asked:.0f} s, more than "
                f"max_retry_after={self.max_retry_after:g} s, so giving up after {attempts} attempt(s)"
            )
        else:
            msg = f"{where}: gave up after {attempts} attempt(s) in {elapsed:.1f} s; last error: {last.reason}"
        raise OpenAIJudgeError(msg, status=last.status, attempts=attempts)

    async def _attempt(self, request: Callable[[], Awaitable[Any]], parse: Callable[[Any], Any]) -> Any:
        """One request: its parsed answer, or `_Retryable`, or `OpenAIJudgeError` (not retried)."""
        openai = _import_openai()
        self.stats["attempts"] += 1
        failure: BaseException | None = None
        try:
            response = await asyncio.wait_for(request(), self.timeout)
        except (asyncio.TimeoutError, openai.APITimeoutError):
            failure = _Retryable(
                f"timed out after {self.timeout:g} s (a busy server may need longer: --judge-timeout)", timed_out=True
            )
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            failure = _Retryable(self._scrub(f"connection error: {type(cause).__name__}: {cause}"))
        except openai.APIStatusError as e:
            failure = self._status_failure(e)
        except (ValueError, TypeError, openai.APIResponseValidationError) as e:  # a body that is not JSON
            failure = OpenAIJudgeError(
                self._scrub(
                    f"{self.model} at {_public_url(self.base_url)}: unreadable reply ({type(e).__name__}: {e})"
                ),
                unusable=True,
            )
        except openai.OpenAIError as e:
            failure = OpenAIJudgeError(
                self._scrub(f"{self.model} at {_public_url(self.base_url)}: {type(e).__name__}: {e}")
            )
        if failure is not None:
            raise failure  # outside the except blocks: the client's exception is not chained
        try:
            return parse(response)
        except OpenAIJudgeError as e:
            e.unusable = True  # the server answered; what it said cannot be used
            raise

    def _status_failure(self, e: Any) -> BaseException:
        status = int(getattr(e, "status_code", 0) or 0)
        server_msg = self._server_message(e)
        where = f"{self.model} at {_public_url(self.base_url)}"
        if RetryPolicy.retried(status):
            ra = RetryPolicy.retry_after(status, getattr(getattr(e, "response", None), "headers", None))
            return _Retryable(f"HTTP {status}: {server_msg}", status=status, retry_after=ra)
        if status == 401:
            state = "" if os.environ.get(self.api_key_env) else f" (${self.api_key_env} is not set)"
            # the server's text is left out: OpenAI's quotes part of the key
            return OpenAIJudgeError(
                f"{where}: HTTP 401 unauthorized: check the API key in ${self.api_key_env}{state}", status=status
            )
        if status == 403:
            return OpenAIJudgeError(
                f"{where}: HTTP 403 forbidden: the key in ${self.api_key_env} may not use this model or endpoint",
                status=status,
            )
        if status == 404:
            return OpenAIJudgeError(
                f"{where}: HTTP 404: no such model or endpoint (is the base_url right, "
                f"usually ending in /v1?): {server_msg}",
                status=status,
            )
        return OpenAIJudgeError(f"{where}: HTTP {status}: {server_msg}", status=status)

    def _server_message(self, e: Any) -> str:
        body = getattr(e, "body", None)
        msg: Any = None
        if isinstance(body, dict):
            err = body.get("error", body)
            msg = err.get("message") if isinstance(err, dict) else err
            msg = msg or body.get("detail") or body.get("message")
        if not msg:
            msg = getattr(e, "message", None) or str(e)
        return self._scrub(str(msg), limit=300)

    def _reply(self, response: Any, logprobs: int) -> Reply:
        where = f"{self.model} at {_public_url(self.base_url)}"
        choices = getattr(response, "choices", None)
        if not choices:
            raise OpenAIJudgeError(f"{where}: the reply has no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None) if message is not None else None
        if content is None:
            refusal = getattr(message, "refusal", None) if message is not None else None
            if refusal:
                raise OpenAIJudgeError(self._scrub(f"{where}: the model refused: {refusal}"))
            raise OpenAIJudgeError(
                f"{where}: the reply has no message content (finish_reason={getattr(choice, 'finish_reason', None)!r})"
            )
        lps: list[TokenLogprob] | None = None
        if logprobs:
            lp = getattr(choice, "logprobs", None)
            items = getattr(lp, "content", None) if lp is not None else None
            if items is None:
                raise OpenAIJudgeError(
                    f"{where}: logprobs were asked for but the reply has none; if the server "
                    f"cannot give them, make the judge with supports_logprobs=False"
                )
            lps = []
            for item in items:
                token, value = getattr(item, "token", None), getattr(item, "logprob", None)
                if token is None or value is None:
                    raise OpenAIJudgeError(f"{where}: a logprob entry without token or logprob")
                top: dict[str, float] = {}
                for alt in getattr(item, "top_logprobs", None) or []:
                    if alt.token is not None and alt.logprob is not None:
                        top.setdefault(alt.token, float(alt.logprob))  # best first: keep the first of equals
                top.setdefault(token, float(value))
                lps.append(TokenLogprob(token=token, logprob=float(value), top=top))
        u = getattr(response, "usage", None)
        details = getattr(u, "prompt_tokens_details", None)  # OpenAI, vLLM with prefix caching, OpenRouter
        usage = Usage(
            prompt_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(u, "completion_tokens", 0) or 0),
            calls=1,
            cached_prompt_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        )
        return Reply(text=content, logprobs=lps, usage=usage, finish_reason=getattr(choice, "finish_reason", None))

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._sem = self._loop = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()
