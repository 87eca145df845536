"""Several KV sequences in one llama.cpp context, and one decode for the calls that wait together.

The embedded judge's calls share long prefixes: a scorer's instructions and worked examples, then a
latent's label, then one excerpt and the question. llama-cpp-python's `Llama` keeps the KV of one
prompt only, so each switch between detection and fuzzing, or between a label and its control,
recomputed the whole shared prefix; and it evaluates one call at a time, a few dozen new tokens per
decode, where llama.cpp's matrix kernels want hundreds.

`SequencePool` keeps up to `n_seq` token sequences in one unified KV cache (a cell can belong to
several sequences, so a prefix copied from one sequence to another costs no memory and no compute).
A call starts from the sequence holding the longest prefix of its prompt; the calls that wait
together are decoded in one batch in which the tokens several of them share (past what the cache
held) appear once, tagged with all their sequence ids, and each call's own tail with its own id.
Generation then goes on for all of them together, one token per sequence per decode. Sequences are
recycled least recently used first, and evicted whole when the cache runs out of cells.

llama.cpp reads a token's attention through the first of its sequence ids and needs the sequences
that share a token to hold the same positions before it: the plan below tags shared tokens only on
sequences that start from equally long cached prefixes, and emits every sequence's tokens in
position order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autointerp.llm.base import JudgeError

Captured = tuple[int, float, list[tuple[int, float]]]  # (sampled token, its logprob, top-k [(token, logprob)])


@dataclass
class Ask:
    """One chat call, as tokens: what to generate and what to hand back."""

    tokens: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0
    grammar: Any = None  # a llama_cpp LlamaGrammar
    top_k: int = 0  # logprobs to capture at each generated position (raw logits, before any sampler)
    generated: list[int] = field(default_factory=list)
    captured: list[Captured] = field(default_factory=list)
    reused: int = 0  # prompt tokens not evaluated for this call (held by the cache or by a batch-mate)
    finish: str = "length"
    error: Exception | None = None


@dataclass
class Slot:
    """One KV sequence: the tokens it holds, and when it was last used."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    used: int = 0


@dataclass
class _Node:
    token: int
    pos: int
    seqs: list[int]
    logits: bool = False


class KVFull(JudgeError):
    """The cache has no cells left for a batch, even with every other sequence evicted."""


TAIL = 256  # tokens of a sequence past what others hold, under which losing it costs only a call's tail


def common_prefix(a: list[int], b: list[int]) -> int:
    import numpy as np

    return _common(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


def _common(a: Any, b: Any) -> int:
    """The length of the common prefix of two int arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    same = a[:n] == b[:n]
    return n if bool(same.all()) else int(same.argmin())


def log_softmax_top(row: Any, token: int, k: int) -> Captured:
    """The logprob of `token` and the top-k of one row of raw logits."""
    import numpy as np

    x = np.asarray(row, dtype=np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    kk = min(k, x.shape[0])
    top = np.argpartition(x, -kk)[-kk:]
    top = top[np.argsort(-x[top], kind="stable")]
    return int(token), float(x[token] - lse), [(int(i), float(x[i] - lse)) for i in top]


class SequencePool:
    """The sequences of one llama.cpp context (unified KV cache) and the batched decodes over them.

    Not thread-safe: the judge calls it under its own lock."""

    def __init__(self, model: Any, ctx: Any, *, n_seq: int, n_batch: int, n_ctx_seq: int):
        import llama_cpp
        from llama_cpp import _internals

        self._llama_cpp = llama_cpp
        self.model = model
        self.ctx = ctx
        self.n_batch = n_batch
        self.n_ctx_seq = n_ctx_seq  # the most tokens one sequence may hold
        self.slots = [Slot(seq=i) for i in range(n_seq)]
        self._clock = 0
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=n_seq, verbose=False)
        self.n_vocab = model.n_vocab()
        self.decoded_tokens = 0  # tokens evaluated, all calls together (what benches and tests read)
        self.decodes = 0

    @property
    def max_asks(self) -> int:
        """Calls one batch may take: each needs a destination sequence that is no call's source."""
        return max(1, len(self.slots) // 2)

    def close(self) -> None:
        self._batch.close()

    # -- choosing sequences -----------------------------------------------------------------------

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def best_source(self, tokens: list[int], limit: int) -> tuple[Slot | None, int]:
        """The sequence holding the longest prefix of `tokens` (at most `limit` of them)."""
        best, length = None, 0
        for slot in self.slots:
            n = min(common_prefix(slot.tokens, tokens), limit)
            if n > length or (n == length and best is not None and n > 0 and slot.used > best.used):
                best, length = slot, n
        return best, length

    def _claim(self, sources: set[int], taken: set[int], incoming: list[list[int]]) -> Slot:
        """The sequence to write a call into: one that no call of this batch reads from or writes to,
        and, of those, one whose loss costs least. A sequence whose tokens other sequences (or the calls
        being written) also hold up to its last TAIL tokens is cheap to lose: only its tail goes. So the
        least recently used cheap one goes first, and only when none is cheap the least recently used
        of all: a stream of calls on one prefix recycles its own tails and leaves the last copy of
        another scorer's prefix in place."""
        import numpy as np

        free = [s for s in self.slots if s.seq not in sources and s.seq not in taken]
        if not free:
            raise RuntimeError("no free KV sequence for this batch (a bug: batches take at most max_asks calls)")
        held = {s.seq: np.asarray(s.tokens, dtype=np.int64) for s in self.slots if s.seq not in taken and s.tokens}
        others = list(held.items()) + [(-1, np.asarray(t, dtype=np.int64)) for t in incoming]

        def unique(slot: Slot) -> int:
            mine = held.get(slot.seq)
            if mine is None:
                return 0
            covered = max((_common(mine, theirs) for seq, theirs in others if seq != slot.seq), default=0)
            return len(mine) - covered

        cheap = [s for s in free if unique(s) <= TAIL]
        return min(cheap or free, key=lambda s: s.used)

    def _start(self, dest: Slot, source: Slot | None, length: int) -> None:
        """Make `dest` hold `source`'s first `length` tokens (a copy of tags, not of data)."""
        mem = self.ctx.memory
        lc = self._llama_cpp
        lc.llama_memory_seq_rm(mem, dest.seq, -1, -1)
        dest.tokens = []
        if source is not None and length > 0:
            if source is not dest:
                lc.llama_memory_seq_cp(mem, source.seq, dest.seq, 0, length)
            dest.tokens = source.tokens[:length]

    def clear(self) -> None:
        """Forget every sequence: the next prompt is evaluated whole, its KV from the first cell on."""
        for slot in self.slots:
            self._drop(slot)

    def _drop(self, slot: Slot) -> None:
        self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot.seq, -1, -1)
        slot.tokens = []
        slot.used = 0

    # -- decoding ---------------------------------------------------------------------------------

    def _decode(
        self,
        nodes: list[_Node],
        keep: set[int],
        on_rows: Callable[[list[tuple[int, int]]], None],
        max_outputs: int | None = None,
    ) -> None:
        """Decode `nodes` in order, at most n_batch a call; after each call, `on_rows` gets (index in
        `nodes`, index in that call) of the nodes that asked for logits, to read them before the next call
        overwrites them. Sequences outside `keep` are evicted, least recently used first, when the cache
        has no room."""
        lc = self._llama_cpp
        b = self._batch.batch
        for start, part in self._calls(nodes, max_outputs):
            b.n_tokens = len(part)
            wanted = []
            for i, node in enumerate(part):
                b.token[i] = node.token
                b.pos[i] = node.pos
                b.n_seq_id[i] = len(node.seqs)
                for j, s in enumerate(node.seqs):
                    b.seq_id[i][j] = s
                b.logits[i] = node.logits
                if node.logits:
                    wanted.append((start + i, i))
            while True:
                rc = lc.llama_decode(self.ctx.ctx, b)
                if rc == 0:
                    break
                if rc != 1:
                    raise RuntimeError(f"llama_decode returned {rc}")
                victims = [s for s in self.slots if s.seq not in keep and s.tokens]
                if not victims:
                    raise KVFull(
                        f"llama.cpp's KV cache has no room for a batch of {len(part)} tokens "
                        "(give the judge more kv_cells)"
                    )
                self._drop(min(victims, key=lambda s: s.used))
            self.decoded_tokens += len(part)
            self.decodes += 1
            on_rows(wanted)

    def _calls(self, nodes: list[_Node], max_outputs: int | None) -> list[tuple[int, list[_Node]]]:
        """`nodes` cut into decode calls of at most n_batch tokens and `max_outputs` logits rows."""
        calls: list[tuple[int, list[_Node]]] = []
        start, outputs = 0, 0
        for i, node in enumerate(nodes):
            full = i - start >= self.n_batch or (max_outputs is not None and node.logits and outputs >= max_outputs)
            if full:
                calls.append((start, nodes[start:i]))
                start, outputs = i, 0
            outputs += node.logits
        if start < len(nodes):
            calls.append((start, nodes[start:]))
        return calls

    def _row(self, batch_index: int) -> Any:
        import numpy as np

        ptr = self.ctx.get_logits_ith(batch_index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # -- chat calls -------------------------------------------------------------------------------

    def run(self, asks: list[Ask], sampler_for: Callable[[Ask], Any], is_eog: Callable[[int], bool]) -> None:
        """Evaluate the prompts of `asks` (at most `max_asks`) in shared batches, then generate for all of
        them together. Results go into each Ask; a failure sets every unfinished Ask's `error`."""
        if len(asks) > self.max_asks:
            raise ValueError(f"at most {self.max_asks} calls a batch, not {len(asks)}")
        dests: list[Slot] = []
        samplers = [sampler_for(ask) for ask in asks]
        try:
            dests = self._start_all(asks)
            nodes, last = self._plan(asks, dests)

            def first(pairs: list[tuple[int, int]]) -> None:
                for node, in_call in pairs:
                    j = last[node]
                    self._sample(asks[j], samplers[j], in_call, is_eog)

            self._decode(nodes, {d.seq for d in dests}, first)
            for dest, ask in zip(dests, asks, strict=True):
                dest.tokens = list(ask.tokens)
            self._generate(asks, dests, samplers, is_eog)
        except Exception as e:
            for ask in asks:
                ask.error = e
            for slot in dests:  # their KV may be half written: forget them
                self._drop(slot)
        finally:
            for sampler in samplers:
                sampler.close()

    def _start_all(self, asks: list[Ask]) -> list[Slot]:
        """Each call's destination sequence, started from the sequence holding most of its prompt."""
        plans = [self.best_source(ask.tokens, len(ask.tokens) - 1) for ask in asks]  # the last token runs again
        sources = {s.seq for s, _ in plans if s is not None}
        dests: list[Slot] = []
        for _ in plans:
            dests.append(self._claim(sources, {d.seq for d in dests}, [a.tokens for a in asks]))
        for dest, (source, length) in zip(dests, plans, strict=True):
            self._start(dest, source, length)
            dest.used = self._tick()
        return dests

    def _plan(self, asks: list[Ask], dests: list[Slot]) -> tuple[list[_Node], dict[int, int]]:
        """The tokens to decode: what several calls share past equally long cached prefixes once (tagged
        with all their sequences), then each call's own tail; and which node is each call's last token."""
        nodes: list[_Node] = []
        node_at: list[dict[int, int]] = []
        last: dict[int, int] = {}
        for j, ask in enumerate(asks):
            cached = len(dests[j].tokens)
            share, with_k = cached, -1
            for k in range(j):
                if len(dests[k].tokens) != cached or not asks[k].tokens:
                    continue
                n = min(common_prefix(asks[k].tokens, ask.tokens), len(ask.tokens) - 1)
                if n > share:
                    share, with_k = n, k
            mine: dict[int, int] = {}
            for pos in range(cached, share):
                idx = node_at[with_k][pos]
                nodes[idx].seqs.append(dests[j].seq)
                mine[pos] = idx
            for pos in range(share, len(ask.tokens)):
                mine[pos] = len(nodes)
                nodes.append(_Node(ask.tokens[pos], pos, [dests[j].seq]))
            end = mine[len(ask.tokens) - 1]
            nodes[end].logits = True
            last[end] = j
            ask.reused = share
            node_at.append(mine)
        return nodes, last

    def _sample(self, ask: Ask, sampler: Any, in_call: int, is_eog: Callable[[int], bool]) -> None:
        """The next token of `ask` from the logits at `in_call` of the decode that just ran."""
        if ask.top_k > 0:
            row = self._row(in_call).copy()  # raw: before the sampler (a grammar) changes anything
        token = int(sampler.sample(self.ctx, in_call))
        if is_eog(token):
            ask.finish = "stop"
            return
        if ask.top_k > 0:
            ask.captured.append(log_softmax_top(row, token, ask.top_k))
        ask.generated.append(token)

    def _generate(self, asks: list[Ask], dests: list[Slot], samplers: list[Any], is_eog: Callable[[int], bool]) -> None:
        """Go on one token per unfinished call per decode, all calls together."""
        while True:
            active = []
            for j, ask in enumerate(asks):
                if ask.finish == "stop" or not ask.generated:
                    continue
                if len(ask.generated) >= ask.max_tokens or len(ask.tokens) + len(ask.generated) >= self.n_ctx_seq:
                    continue  # finish stays "length"
                active.append(j)
            if not active:
                return
            nodes = []
            for j in active:
                ask, dest = asks[j], dests[j]
                nodes.append(_Node(ask.generated[-1], len(dest.tokens), [dest.seq], logits=True))
                dest.tokens.append(ask.generated[-1])

            def step(pairs: list[tuple[int, int]], active: list[int] = active) -> None:
                for node, in_call in pairs:
                    j = active[node]
                    self._sample(asks[j], samplers[j], in_call, is_eog)

            self._decode(nodes, {d.seq for d in dests}, step)

    # -- teacher forcing --------------------------------------------------------------------------

    def score(self, tokens: list[int], rows_from: int, chunk: int, on_rows: Callable[[Any, list[int]], None]) -> int:
        """Evaluate `tokens` in a sequence of their own, reading the logits of positions `rows_from` to
        the next-to-last in chunks of `chunk` rows: `on_rows(rows, positions)` after each decode (the
        rows are only valid until the next). Starts from the sequence holding the longest prefix (before
        `rows_from`, whose rows must be computed). Returns how many tokens it evaluated."""
        import numpy as np

        source, length = self.best_source(tokens, rows_from)
        dest = self._claim(set() if source is None else {source.seq}, set(), [tokens])
        self._start(dest, source, length)
        dest.used = self._tick()
        last = len(tokens) - 1
        nodes = [_Node(tokens[p], p, [dest.seq], logits=rows_from <= p < last) for p in range(length, len(tokens))]

        def read(pairs: list[tuple[int, int]]) -> None:
            if not pairs:
                return
            rows = np.ctypeslib.as_array(self.ctx.get_logits(), shape=(len(pairs), self.n_vocab))
            on_rows(rows, [nodes[i].pos for i, _ in pairs])

        try:
            self._decode(nodes, {dest.seq}, read, max_outputs=chunk)
        except Exception:
            self._drop(dest)
            raise
        dest.tokens = list(tokens)
        return len(nodes)
