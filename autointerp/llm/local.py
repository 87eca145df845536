"""The embedded judge: a GGUF model run in-process by llama.cpp (`llama-cpp-python`).

One `llama_cpp.Llama` per judge. llama.cpp is not thread-safe, so calls are serialised (an asyncio
lock to queue callers without tying up worker threads, and a threading lock around the model
itself, which still holds if a caller is cancelled while its call runs) and each blocking call
runs in a worker thread so the event loop stays responsive.

Prefix reuse: `Llama.generate` keeps the KV cache of the previous call and only evaluates the
tokens after the longest common prefix with it, so consecutive prompts that share a long system
prompt and examples cost only their differing tails. Keep prompts that share a prefix together.
The library does not report how much it reused, so the judge works it out the same way just before
`generate` runs (`reused`) and reports it as the reply's `cached_prompt_tokens`.

Logprobs: the library's own logprobs path (`logits_all=True`) log-softmaxes the logits of every
token in the context and sorts the whole vocabulary in Python for every generated token, which on
a large vocabulary (Qwen's has 151,936 tokens) costs many times what generating a one-token Yes/No
answer does. Instead the judge reads the raw logits of each sampled position straight from the
llama.cpp context as the token is sampled (before any grammar or sampler changes them), takes
the log-softmax of that one row and the top-k with `argpartition`. This needs no `logits_all`,
which also skips computing the output layer for every prompt token and a n_ctx x n_vocab float
array (4096 x 151,936 float32 = 2.5 GB for Qwen at n_ctx=4096). `logprobs_impl="library"` (with `logits_all=True`) uses
llama-cpp-python's path instead; a test checks both agree.

Prompt logprobs (`prompt_logprobs`, teacher forcing a raw text): the same context evaluates the
text's tokens in chunks of `logits_chunk` with a llama.cpp batch that asks for the logits of every
token (the low-level `llama_decode` with each token's `logits` flag set), and each chunk's rows are
reduced to (logprob of the next token, top-k) in numpy before the next chunk runs. The context's
output buffer therefore grows to `logits_chunk` x n_vocab floats (64 x 151,936 float32 = 39 MB for
Qwen), not
n_ctx x n_vocab, and chat stays as fast as before (its batches still ask for the last row only).
The tokens a text shares with the previous scored text are not evaluated again: their results are
kept beside the KV cache, so texts with a common prefix (a scorer's instructions, few-shot block and
explanation) cost only their tails. `input_ids`/`n_tokens` are kept in step with the KV cache, so a
later chat reuses what it can and re-evaluates the rest; a chat in between drops the kept results.
`bench/prompt_logprobs.py` measures this path against a second context with `logits_all=True`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from autointerp.errors import MissingPackageError
from autointerp.llm.base import JudgeError, Message, PromptToken, Reply, TokenLogprob
from autointerp.records import Usage

INSTALL_HINT = "pip install 'autointerp[embedded]'"

_TOO_LONG = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingPackageError(f"the embedded local judge needs llama-cpp-python: {INSTALL_HINT}") from e
    return llama_cpp


_LLAMA_CLASS: Any = None


def _capturing_llama_class() -> Any:
    """A `llama_cpp.Llama` that records top-k logprobs of each sampled position when asked to."""
    global _LLAMA_CLASS
    if _LLAMA_CLASS is not None:
        return _LLAMA_CLASS
    llama_cpp = _import_llama_cpp()
    import numpy as np

    llama: Any = llama_cpp.Llama

    class _CapturingLlama(llama):
        capture_k: int = 0
        captured: list[tuple[int, float, list[tuple[int, float]]]] | None = None
        reused: int = 0  # prompt tokens of the last generate() the KV cache held (not evaluated again)

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
            self.reused = self._reusable(list(tokens)) if kwargs.get("reset", True) else self.n_tokens
            return super().generate(tokens, *args, **kwargs)

        def _reusable(self, tokens: list[int]) -> int:
            """What `generate` keeps of the KV cache for `tokens`: the common prefix with the tokens it
            holds, less the last one when the prompt is all prefix (it is evaluated again for its logits)."""
            if self.n_tokens <= 0 or not tokens:
                return 0
            held = self.input_ids[: self.n_tokens]
            common = 0
            for a, b in zip(held, tokens, strict=False):
                if a != b:
                    break
                common += 1
            if common == len(tokens):
                exact = self.n_tokens == len(tokens) and not getattr(self, "_requires_eval", False)
                return common if exact else common - 1
            return common

        def sample(self, *args: Any, idx: int | None = None, **kwargs: Any) -> int:
            token = super().sample(*args, idx=idx, **kwargs)
            if self.captured is not None:
                ridx = idx - self.n_tokens if idx is not None else -1
                row = np.ctypeslib.as_array(self._ctx.get_logits_ith(ridx), shape=(self._n_vocab,))
                row = row.astype(np.float64)
                m = row.max()
                lse = m + math.log(float(np.exp(row - m).sum()))
                k = min(self.capture_k, row.shape[0])
                top = np.argpartition(row, -k)[-k:]
                top = top[np.argsort(-row[top], kind="stable")]
                self.captured.append(
                    (int(token), float(row[token] - lse), [(int(i), float(row[i] - lse)) for i in top])
                )
            return token

    _LLAMA_CLASS = _CapturingLlama
    return _LLAMA_CLASS


class LlamaCppJudge:
    """A `Judge` backed by an in-process llama.cpp model (GGUF); also a `TextScorer` (prompt logprobs)."""

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
        logprobs_impl: str = "fast",
        logits_all: bool | None = None,
        logits_chunk: int = 64,
    ):
        if logits_chunk < 1:
            raise ValueError(f"logits_chunk must be at least 1, not {logits_chunk}")
        if logprobs_impl not in ("fast", "library"):
            raise ValueError(f"logprobs_impl must be 'fast' or 'library', not {logprobs_impl!r}")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise JudgeError(f"GGUF file not found: {model_path}")
        cls = _capturing_llama_class()
        if logits_all is None:
            logits_all = logprobs_impl == "library"
        if logprobs_impl == "library" and not logits_all:
            raise ValueError("logprobs_impl='library' needs logits_all=True")
        self.model = model or model_path.stem
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.seed = seed
        self.logprobs_impl = logprobs_impl
        threads = n_threads or os.cpu_count() or 1
        try:
            self._llm: Any = cls(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=n_batch,
                logits_all=logits_all,
                seed=seed,
                verbose=False,
            )
        except Exception as e:  # llama.cpp raises ValueError for an unreadable model
            raise JudgeError(f"llama.cpp could not load {model_path}: {e}") from e
        self._thread_lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None
        self._grammars: dict[str, Any] = {}
        self.logits_chunk = logits_chunk
        # results of the last prompt_logprobs call, one per position of the tokens in the KV cache:
        # (logprob of that token | None, top-k [(token id, logprob)] at that position); [] after a chat
        self._scored: list[tuple[float | None, list[tuple[int, float]]]] = []
        self._scored_k = -1
        self._pieces: dict[int, str] = {}

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:
            self._alock, self._alock_loop = asyncio.Lock(), loop
        return self._alock

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
        async with self._async_lock():
            return await asyncio.to_thread(self._chat_sync, messages, max_tokens, temperature, logprobs, compiled)

    def _chat_sync(
        self, messages: list[Message], max_tokens: int, temperature: float, logprobs: int, grammar: Any
    ) -> Reply:
        with self._thread_lock:
            llm = self._llm
            if llm is None:
                raise JudgeError(f"judge {self.model} is closed")
            self._scored = []  # generate() rewrites the KV cache after the common prefix
            kwargs: dict[str, Any] = {}
            if grammar is not None:
                kwargs["grammar"] = grammar
            fast = logprobs > 0 and self.logprobs_impl == "fast"
            if logprobs > 0 and not fast:
                kwargs.update(logprobs=True, top_logprobs=logprobs)
            if fast:
                llm.capture_k, llm.captured = logprobs, []
            llm.reused = 0
            try:
                out = llm.create_chat_completion(
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=self.seed,
                    **kwargs,
                )
            except ValueError as e:
                m = _TOO_LONG.search(str(e))
                if m:
                    raise JudgeError(
                        f"prompt is {m.group(1)} tokens, which does not fit the context window "
                        f"n_ctx={m.group(2)} of {self.model}"
                    ) from e
                raise JudgeError(f"llama.cpp failed: {e}") from e
            except Exception as e:
                raise JudgeError(f"llama.cpp failed: {type(e).__name__}: {e}") from e
            finally:
                captured, llm.captured = llm.captured, None
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            n_completion = int(usage.get("completion_tokens", 0))
            if fast:
                lps = [self._token_logprob(llm, *c) for c in (captured or [])[:n_completion]]
            elif logprobs > 0:
                lps = _from_chat_logprobs(choice.get("logprobs"))
            else:
                lps = None
        return Reply(
            text=choice["message"].get("content") or "",
            logprobs=lps,
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=n_completion,
                calls=1,
                cached_prompt_tokens=min(int(llm.reused), int(usage.get("prompt_tokens", 0))),
            ),
            finish_reason=choice.get("finish_reason"),
        )

    @staticmethod
    def _token_logprob(llm: Any, token: int, logprob: float, top: list[tuple[int, float]]) -> TokenLogprob:
        def piece(t: int) -> str:
            return llm.detokenize([t]).decode("utf-8", errors="ignore")

        alts: dict[str, float] = {}
        for t, lp in top:
            alts.setdefault(piece(t), lp)  # best first: distinct tokens with the same text keep the best
        text = piece(token)
        alts.setdefault(text, logprob)
        return TokenLogprob(token=text, logprob=logprob, top=alts)

    # -- prompt logprobs (teacher forcing) --------------------------------------------------------

    async def prompt_logprobs(
        self, text: str, *, top_logprobs: int = 0, top_at: Collection[int] | None = None
    ) -> list[PromptToken]:
        """Every token of `text` (no chat template) with its logprob given the tokens before it."""
        if top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, not {top_logprobs}")
        wanted = None if top_at is None else set(top_at)
        async with self._async_lock():
            return await asyncio.to_thread(self._prompt_logprobs_sync, text, top_logprobs, wanted)

    def _prompt_logprobs_sync(self, text: str, k: int, wanted: set[int] | None) -> list[PromptToken]:
        with self._thread_lock:
            llm = self._llm
            if llm is None:
                raise JudgeError(f"judge {self.model} is closed")
            if not text:
                return []
            # special=False: corpus text that spells a control token stays text
            text_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            bos = llm.token_bos()
            lead = [bos] if bos >= 0 and llm._model.add_bos_token() else []
            seq = lead + text_ids
            if len(seq) > self.n_ctx:
                raise JudgeError(
                    f"text is {len(seq)} tokens, which does not fit the context window "
                    f"n_ctx={self.n_ctx} of {self.model}"
                )
            results = self._teacher_force(llm, seq, k)
            pieces = [llm.detokenize([t]) for t in text_ids]
            offsets = char_offsets(text, pieces)
            out = []
            for i, (lp, top) in enumerate(results[len(lead) :]):
                end = offsets[i + 1] if i + 1 < len(offsets) else len(text)
                alts: dict[str, float] = {}
                for t, v in top[:k] if wanted is None or offsets[i] in wanted else ():
                    alts.setdefault(self._piece(llm, t), v)  # best first: same-text tokens keep the best
                out.append(PromptToken(token=text[offsets[i] : end], offset=offsets[i], logprob=lp, top=alts))
            return out

    def _piece(self, llm: Any, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = llm.detokenize([token]).decode("utf-8", errors="ignore")
        return self._pieces[token]

    def _teacher_force(self, llm: Any, seq: list[int], k: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """(logprob, top-k) for each position of `seq`, evaluating only what the KV cache does not hold.

        Position j's result needs the logits of position j-1, so of a common prefix of L tokens with the
        kept results, positions 0..L-1 are reused and evaluation restarts at L-1 (its logits were not kept).
        """
        import numpy as np

        common = 0
        if self._scored_k >= k and self._scored:
            limit = min(llm.n_tokens, len(self._scored), len(seq))
            same = np.asarray(llm.input_ids[:limit]) == np.asarray(seq[:limit], dtype=np.intc)
            common = limit if same.all() else int(np.argmin(same))
        if common == len(seq):
            return self._scored[:common]
        start = max(common - 1, 0)
        results = self._scored[: start + 1] if common else [(None, [])]
        self._scored = []  # not valid again until this evaluation has finished
        if not llm._ctx.kv_cache_seq_rm(-1, start, -1):
            start, results = 0, [(None, [])]
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = start
        n_vocab = llm.n_vocab()
        chunk = max(1, min(self.logits_chunk, llm.n_batch))
        try:
            for pos in range(start, len(seq), chunk):
                part = seq[pos : pos + chunk]
                llm._batch.set_batch(batch=part, n_past=pos, logits_all=True)  # a logits row for every token
                llm._ctx.decode(llm._batch)
                rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(part), n_vocab))
                llm.input_ids[pos : pos + len(part)] = part
                llm.n_tokens = pos + len(part)
                if llm._logits_all:  # keep the library's own logits array in step for its logprobs path
                    llm.scores[pos : pos + len(part), :] = rows
                targets = seq[pos + 1 : pos + 1 + len(part)]  # row i predicts the token after it
                results.extend(_reduce_rows(rows[: len(targets)], targets, k))
        except Exception as e:
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            raise JudgeError(f"llama.cpp failed while scoring a text: {type(e).__name__}: {e}") from e
        llm._requires_eval = True  # a chat with this exact prompt must evaluate before it samples
        self._scored, self._scored_k = results, k
        return results

    async def aclose(self) -> None:
        async with self._async_lock():
            await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._thread_lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                llm.close()


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


def _from_chat_logprobs(lp: dict[str, Any] | None) -> list[TokenLogprob]:
    out = []
    for c in (lp or {}).get("content") or []:
        top = {t["token"]: float(t["logprob"]) for t in c.get("top_logprobs") or []}
        out.append(TokenLogprob(token=c["token"], logprob=float(c["logprob"]), top=top))
    return out


def load_local_judge(
    name: str = "qwen2.5-coder-1.5b", cache_dir: Path | None = None, n_ctx: int = 4096, **kwargs: Any
) -> LlamaCppJudge:
    """The embedded judge by name ("qwen2.5-coder-1.5b"/"qwen", "smollm2") or GGUF path."""
    from autointerp.llm.assets import resolve_gguf

    _import_llama_cpp()  # a missing llama-cpp-python is reported before a 1 GB model is assembled
    path, model = resolve_gguf(name, cache_dir)
    return LlamaCppJudge(path, model=model, n_ctx=n_ctx, **kwargs)
