"""The embedded judge: a GGUF model run in-process by llama.cpp (`llama-cpp-python`).

One llama.cpp model and context per judge, driven through llama-cpp-python's low-level API by
`llama_engine.SequencePool`: several KV sequences in one unified cache, so the prefixes a run
switches between (detection's, fuzzing's, each control's) stay computed, and the calls that wait
together (a scorer gathers all of a latent's questions at once) are decoded in one batch, what they
share past the cache evaluated once. llama.cpp is not thread-safe, so the model is used by one
worker thread at a time (a threading lock, which still holds if a caller is cancelled while its
batch runs); callers queue on the event loop, and whoever arrives while a batch runs joins the next.
Each reply reports as `cached_prompt_tokens` the prompt tokens it did not evaluate (held by a
sequence, or evaluated once for a batch-mate that shares them).

Logprobs: each sampled position's raw logits are read straight from the context before any grammar
or sampler changes them, log-softmaxed in float64, top-k by `argpartition`: no `logits_all`, which
would compute the output layer for every prompt token. A test checks the numbers against
llama-cpp-python's own `logits_all` path.

Prompt logprobs (`prompt_logprobs`, teacher forcing a raw text): the text is evaluated in a sequence
of its own with a logits row for each token, at most `logits_chunk` rows a decode, each chunk reduced
to (logprob of the next token, top-k) in numpy before the next runs, so the output buffer stays
`logits_chunk` x n_vocab floats (64 x 151,936 float32 = 39 MB for Qwen). The results of the last
scored text are kept: a text that shares a prefix with it (a scorer's instructions, few-shot block
and explanation) costs only its tail. `bench/prompt_logprobs.py` measures this path.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from autointerp.errors import MissingPackageError
from autointerp.llm.base import JudgeError, Message, PromptToken, Reply, TokenLogprob
from autointerp.llm.llama_engine import Ask, SequencePool, common_prefix
from autointerp.records import Usage

INSTALL_HINT = "pip install 'autointerp[embedded]'"


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingPackageError(f"the embedded local judge needs llama-cpp-python: {INSTALL_HINT}") from e
    return llama_cpp


class LlamaCppJudge:
    """A `Judge` backed by an in-process llama.cpp model (GGUF); also a `TextScorer` (prompt logprobs).

    `n_ctx` is the most tokens one call may hold (prompt and answer); the cache holds `kv_cells`
    tokens over all `n_seq` sequences (default 2 x n_ctx), shared prefixes counted once.
    """

    supports_logprobs = True
    supports_prompt_logprobs = True
    supports_grammar = True  # chat(grammar=GBNF); the captured logprobs are the raw ones, before it masks

    def __init__(
        self,
        model_path: str | Path,
        *,
        model: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        n_seq: int = 16,
        kv_cells: int | None = None,
        flash_attn: bool = True,
        logits_chunk: int = 64,
    ):
        if logits_chunk < 1:
            raise ValueError(f"logits_chunk must be at least 1, not {logits_chunk}")
        if n_seq < 2:
            raise ValueError(f"n_seq must be at least 2 (a call copies its prefix into another), not {n_seq}")
        if kv_cells is not None and kv_cells < n_ctx:
            raise ValueError(f"kv_cells ({kv_cells}) must hold at least one whole call (n_ctx={n_ctx})")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise JudgeError(f"GGUF file not found: {model_path}")
        llama_cpp = _import_llama_cpp()
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        set_verbose(False)
        self.model = model or model_path.stem
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.seed = seed
        self.logits_chunk = logits_chunk
        threads = n_threads or os.cpu_count() or 1
        cells = kv_cells or 2 * n_ctx
        try:
            self._model: Any = _internals.LlamaModel(
                path_model=str(model_path), params=llama_cpp.llama_model_default_params(), verbose=False
            )
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = cells
            params.n_batch = params.n_ubatch = n_batch
            params.n_threads = params.n_threads_batch = threads
            params.n_seq_max = n_seq
            params.kv_unified = True  # one cache for all sequences: shared prefixes are stored once
            params.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            self._ctx: Any = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        except Exception as e:  # llama.cpp raises ValueError for an unreadable model
            raise JudgeError(f"llama.cpp could not load {model_path}: {e}") from e
        metadata = self._model.metadata()
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise JudgeError(f"{model_path} carries no chat template (tokenizer.chat_template)")
        eos, bos = self._model.token_eos(), self._model.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        self._pool: SequencePool | None = SequencePool(
            self._model, self._ctx, n_seq=n_seq, n_batch=n_batch, n_ctx_seq=n_ctx
        )
        self._llama_cpp = llama_cpp
        self._internals = _internals
        self._thread_lock = threading.Lock()
        self._waiting: dict[asyncio.AbstractEventLoop, list[tuple[Ask, asyncio.Future[Ask]]]] = {}
        self._drains: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._grammars: dict[str, Any] = {}
        # results of the last prompt_logprobs call, one per token of `_scored_tokens`:
        # (logprob of that token | None, top-k [(token id, logprob)] at that position)
        self._scored: list[tuple[float | None, list[tuple[int, float]]]] = []
        self._scored_tokens: list[int] = []
        self._scored_k = -1
        self._pieces: dict[int, str] = {}

    @property
    def pool(self) -> SequencePool:
        if self._pool is None:
            raise JudgeError(f"judge {self.model} is closed")
        return self._pool

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:  # unlike response_format, a schema llama.cpp cannot express is an error, not plain JSON
                self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
            except Exception as e:
                raise JudgeError(f"cannot turn the JSON schema into a llama.cpp grammar: {e}") from e
        return self._grammars[key]

    def _gbnf(self, text: str) -> Any:
        key = "gbnf:" + text
        if key not in self._grammars:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:
                self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
            except Exception as e:
                raise JudgeError(f"llama.cpp cannot parse the grammar: {e}") from e
        return self._grammars[key]

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """The chat template applied to `messages`, as the tokens the model reads."""
        try:
            result = self._formatter(messages=messages)  # type: ignore[arg-type]
        except Exception as e:
            raise JudgeError(f"the chat template of {self.model} failed on these messages: {e}") from e
        return list(self._model.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))

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
        if schema is not None and grammar is not None:
            raise ValueError("give a JSON schema or a grammar, not both")
        compiled = self._gbnf(grammar) if grammar is not None else None
        if schema is not None:
            compiled = self._grammar(schema)
        _ = self.pool  # a closed judge says so before anything else
        tokens = self.prompt_tokens(messages)
        if len(tokens) >= self.n_ctx:
            raise JudgeError(
                f"prompt is {len(tokens)} tokens, which does not fit the context window "
                f"n_ctx={self.n_ctx} of {self.model}"
            )
        ask = Ask(
            tokens=tokens,
            max_tokens=max(1, max_tokens),
            temperature=temperature,
            seed=self.seed,
            grammar=compiled,
            top_k=max(0, logprobs),
        )
        await self._submit(ask)
        if ask.error is not None:
            if isinstance(ask.error, JudgeError):
                raise ask.error
            raise JudgeError(f"llama.cpp failed: {type(ask.error).__name__}: {ask.error}") from ask.error
        text = self._model.detokenize(ask.generated, special=False).decode("utf-8", errors="ignore")
        lps = [self._token_logprob(*c) for c in ask.captured] if logprobs > 0 else None
        return Reply(
            text=text,
            logprobs=lps,
            usage=Usage(
                prompt_tokens=len(tokens),
                completion_tokens=len(ask.generated),
                calls=1,
                cached_prompt_tokens=min(ask.reused, len(tokens)),
            ),
            finish_reason=ask.finish,
        )

    # -- the queue: calls that wait together run as one batch ----------------------------------

    async def _submit(self, ask: Ask) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ask] = loop.create_future()
        self._waiting.setdefault(loop, []).append((ask, future))
        if loop not in self._drains:
            self._drains[loop] = loop.create_task(self._drain(loop))
        await future

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the waiting calls, a batch at a time, until none wait. A call that arrives while a batch
        runs joins the next one; a cancelled caller's call is dropped if it has not started."""
        waiting = self._waiting[loop]
        try:
            while waiting:
                await asyncio.sleep(0)  # let callers being gathered right now join this batch
                n = self._pool.max_asks if self._pool is not None else len(waiting)
                batch = [(a, f) for a, f in waiting[:n] if not f.done()]
                del waiting[:n]
                if batch:
                    await asyncio.to_thread(self._run_sync, [a for a, _ in batch])
                for ask, future in batch:
                    if not future.done():
                        future.set_result(ask)
        except BaseException as e:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(JudgeError(f"llama.cpp judge stopped: {type(e).__name__}: {e}"))
            waiting.clear()
            raise
        finally:
            self._drains.pop(loop, None)

    def _run_sync(self, asks: list[Ask]) -> None:
        with self._thread_lock:
            if self._pool is None:
                for ask in asks:
                    ask.error = JudgeError(f"judge {self.model} is closed")
                return
            vocab = self._model.vocab
            is_eog = self._llama_cpp.llama_vocab_is_eog
            self._pool.run(asks, self._sampler, lambda t: bool(is_eog(vocab, t)))

    def _sampler(self, ask: Ask) -> Any:
        """llama-cpp-python's own chat defaults: greedy at temperature 0, else top-k 40, top-p 0.95,
        min-p 0.05, then the temperature; a grammar first when there is one."""
        sampler = self._internals.LlamaSampler()
        if ask.grammar is not None:
            sampler.add_grammar(self._model, ask.grammar)
        if ask.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(40)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(0.95, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(ask.temperature)
            sampler.add_dist(ask.seed)
        return sampler

    def _token_logprob(self, token: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
        alts: dict[str, float] = {}
        for t, lp in top:
            alts.setdefault(self._piece(t), lp)  # best first: distinct tokens with the same text keep the best
        text = self._piece(token)
        alts.setdefault(text, logprob)
        return TokenLogprob(token=text, logprob=logprob, top=alts)

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self._model.detokenize([token], special=False).decode("utf-8", errors="ignore")
        return self._pieces[token]

    # -- prompt logprobs (teacher forcing) --------------------------------------------------------

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        """Every token of `text` (no chat template) with its logprob given the tokens before it."""
        if top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, not {top_logprobs}")
        wanted = None if top_at is None else set(top_at)
        return await asyncio.to_thread(self._prompt_logprobs_sync, text, top_logprobs, wanted)

    def _prompt_logprobs_sync(self, text: str, k: int, wanted: set[int] | None) -> list[PromptToken]:
        with self._thread_lock:
            pool = self.pool
            if not text:
                return []
            # special=False: corpus text that spells a control token stays text
            text_ids = self.tokenize(text)
            bos = self._model.token_bos()
            lead = [bos] if bos >= 0 and self._model.add_bos_token() else []
            seq = lead + text_ids
            if len(seq) > self.n_ctx:
                raise JudgeError(
                    f"text is {len(seq)} tokens, which does not fit the context window "
                    f"n_ctx={self.n_ctx} of {self.model}"
                )
            results = self._teacher_force(pool, seq, k)
            pieces = [self._model.detokenize([t], special=False) for t in text_ids]
            offsets = char_offsets(text, pieces)
            out = []
            for i, (lp, top) in enumerate(results[len(lead) :]):
                end = offsets[i + 1] if i + 1 < len(offsets) else len(text)
                alts: dict[str, float] = {}
                for t, v in top[:k] if wanted is None or offsets[i] in wanted else ():
                    alts.setdefault(self._piece(t), v)  # best first: same-text tokens keep the best
                out.append(PromptToken(token=text[offsets[i] : end], offset=offsets[i], logprob=lp, top=alts))
            return out

    def _teacher_force(
        self, pool: SequencePool, seq: list[int], k: int
    ) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """(logprob, top-k) for each position of `seq`, computing only what the kept results lack.

        Token j's result comes from the logits of position j-1: of a common prefix of r tokens with the
        last scored text, results 0..r-1 are kept and rows are read again from position r-1."""
        r = common_prefix(self._scored_tokens, seq) if self._scored_k >= k else 0
        r = min(r, len(self._scored))
        if r == len(seq):
            return self._scored[:r]
        start = max(r - 1, 0)
        results = self._scored[: start + 1] if r else [(None, [])]
        self._scored, self._scored_tokens = [], []  # not valid again until this evaluation has finished

        def reduce(rows: Any, positions: list[int]) -> None:
            results.extend(_reduce_rows(rows, [seq[p + 1] for p in positions], k))

        try:
            pool.score(seq, start, self.logits_chunk, reduce)
        except Exception as e:
            raise JudgeError(f"llama.cpp failed while scoring a text: {type(e).__name__}: {e}") from e
        self._scored, self._scored_tokens, self._scored_k = results, list(seq), k
        return results

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._thread_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
                self._ctx.close()
                self._model.close()


def _reduce_rows(rows: Any, targets: list[int], k: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """Log-softmax each row of logits; the logprob of its target token and its top-k (best first)."""
    import numpy as np

    if not targets:
        return []
    x = np.asarray(rows, dtype=np.float32)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0].astype(np.float64) + np.log(np.exp(x - m).sum(axis=1, dtype=np.float64))
    idx = np.arange(len(targets))
    target_lp = x[idx, np.asarray(targets)] - lse
    out: list[tuple[float | None, list[tuple[int, float]]]] = []
    if k:
        kk = min(k, x.shape[1])
        top = np.argpartition(x, -kk, axis=1)[:, -kk:]
        vals = np.take_along_axis(x, top, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_lp = np.take_along_axis(vals, order, axis=1) - lse[:, None]
    for i in range(len(targets)):
        alts = [(int(t), float(v)) for t, v in zip(top[i], top_lp[i], strict=True)] if k else []
        out.append((float(target_lp[i]), alts))
    return out


def char_offsets(text: str, pieces: list[bytes]) -> list[int]:
    """The character offset in `text` where each token starts, from the bytes each token detokenizes to.

    A SentencePiece tokenizer may detokenize to the text with a space in front (its added space
    prefix): that space belongs to no character of the text and is skipped. A token that starts inside
    a multi-byte character is placed at that character. Where a tokenizer normalised the text (pieces
    that do not spell it), the offsets are the best byte-count estimate, clamped to the text.
    """
    data = text.encode("utf-8")
    joined = b"".join(pieces)
    pos = -(len(joined) - len(data)) if len(joined) > len(data) and joined.endswith(data) else 0
    byte_to_char = [0] * (len(data) + 1)
    b = 0
    for i, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        byte_to_char[b : b + n] = [i] * n
        b += n
    byte_to_char[len(data)] = len(text)
    out = []
    for p in pieces:
        out.append(byte_to_char[min(max(pos, 0), len(data))])
        pos += len(p)
    return out


def load_local_judge(
    name: str = "qwen2.5-coder-1.5b", cache_dir: Path | None = None, n_ctx: int = 4096, **kwargs: Any
) -> LlamaCppJudge:
    """The embedded judge by name ("qwen2.5-coder-1.5b"/"qwen", "smollm2") or GGUF path."""
    from autointerp.llm.assets import resolve_gguf

    _import_llama_cpp()  # a missing llama-cpp-python is reported before a 1 GB model is assembled
    path, model = resolve_gguf(name, cache_dir)
    return LlamaCppJudge(path, model=model, n_ctx=n_ctx, **kwargs)
