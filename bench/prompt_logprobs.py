"""Prompt logprobs on the embedded judge: our batch-logits path against a second `logits_all` context.

    python bench/prompt_logprobs.py [--judge smollm2] [--texts 6] [--repeats 3] [--threads 1] [--chunks 16,256]

The workload looks like the simulation scorer's: texts that share a ~250-token prefix (instructions,
a few-shot block, the explanation) and differ in a ~100-token tail. Prints, per text:

- `ours, prefix reuse`: `LlamaCppJudge.prompt_logprobs` as the scorers use it;
- `ours, no reuse`: the same with the kept results dropped before each text (every token evaluated);
- `ours, chunk N`: no reuse, with N logits rows per llama.cpp batch (`--chunks`; the judge's default
  is `LlamaCppJudge.logits_chunk`);
- `second context, logits_all`: a second `llama_cpp.Llama(logits_all=True)` on the same file, the
  alternative design (and the reference the tests compare against), log-softmax in numpy;

then the memory each design holds for logits, the largest difference between the two designs'
logprobs, and a one-token chat on the judge (whose context has no `logits_all`) against the same chat
through llama-cpp-python's own chat on the `logits_all=True` context, which is why the judge does
not simply turn `logits_all` on.

Each figure is the best of `--repeats` rounds, the designs interleaved within a round, so that other
work on a shared machine inflates them as little as possible; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from autointerp.llm.local import load_local_judge

WORDS = (
    "the report said that in may we met again after rain the city council voted on a plan to build a new "
    "bridge over the river before the winter storms"
).split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    prefix = (
        "A feature of a language model fires on some tokens of a text. Each line holds one token, a tab, "
        "and how strongly the feature fires on it, from 0 to 9.\n\n"
    )
    prefix += "\n".join(f"{w}\t{int(rng.integers(0, 10))}" for w in rng.choice(WORDS, size=80)) + "\n\n"
    prefix += "Feature: names of months\n<start>\n"
    return [prefix + "\n".join(f" {w}\t0" for w in rng.choice(WORDS, size=32)) for _ in range(n)]


def per_text(fn, items: list[str]) -> float:
    start = time.perf_counter()
    for t in items:
        fn(t)
    return (time.perf_counter() - start) / len(items)


def best_of(repeats: int, runs: dict[str, object]) -> dict[str, float]:
    """Each named zero-argument timing function run `repeats` times, interleaved; the minimum of each."""
    out: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            out[name] = min(out.get(name, float("inf")), fn())  # type: ignore[operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="smollm2")
    parser.add_argument("--texts", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1: steadier figures)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--chunks", default="16,256", help="other logits chunk sizes to time, comma-separated")
    args = parser.parse_args()
    import llama_cpp

    judge = load_local_judge(args.judge, n_ctx=args.n_ctx, n_threads=args.threads)
    items = texts(args.texts)
    n_tok = len(judge.tokenize(items[0]))
    n_vocab = judge.pool.n_vocab
    print(
        f"judge {judge.model}: {len(items)} texts of {n_tok} tokens sharing a prefix, top_logprobs=20, "
        f"n_vocab {n_vocab:,}"
    )

    def ours(text: str, reuse: bool = True) -> list:
        if not reuse:  # neither the kept results nor any sequence's KV
            judge._scored, judge._scored_tokens = [], []
            judge.pool.clear()
        return asyncio.run(judge.prompt_logprobs(text, top_logprobs=20))

    second = llama_cpp.Llama(
        model_path=str(judge.model_path),
        n_ctx=args.n_ctx,
        logits_all=True,
        flash_attn=True,  # as the judge: the two differ in how they read logits, not in attention
        verbose=False,
        n_threads=args.threads,
        n_threads_batch=args.threads,
    )

    def reference(text: str) -> np.ndarray:
        ids = second.tokenize(text.encode(), add_bos=False, special=False)
        second.reset()
        second.eval(ids)
        x = second.scores[: len(ids)].astype(np.float32)
        m = x.max(axis=1, keepdims=True)
        ls = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
        np.argpartition(ls[:-1], -20, axis=1)  # the same work as ours: the top 20 of each row
        return ls[np.arange(len(ids) - 1), ids[1:]]

    default_chunk = judge.logits_chunk

    def chunked(n: int) -> float:
        judge.logits_chunk = n
        try:
            return per_text(lambda t: ours(t, reuse=False), items)
        finally:
            judge.logits_chunk = default_chunk

    ours(items[-1])  # warm up
    times = best_of(
        args.repeats,
        {
            "ours, prefix reuse": lambda: per_text(ours, items),
            f"ours, no reuse (chunk {default_chunk})": lambda: per_text(lambda x: ours(x, reuse=False), items),
            **{f"ours, chunk {n} (no reuse)": (lambda n=n: chunked(n)) for n in map(int, args.chunks.split(","))},
            "second context, logits_all": lambda: per_text(reference, items),
        },
    )
    for name, v in times.items():
        print(f"  {name:30s} {1000 * v:8.1f} ms/text")
    ref = times["second context, logits_all"]
    full = times[f"ours, no reuse (chunk {default_chunk})"]
    print(
        f"  second context / ours: x{ref / full:.2f} without prefix reuse, "
        f"x{ref / times['ours, prefix reuse']:.2f} with it"
    )
    diffs = [np.abs(np.array([p.logprob for p in ours(t)[1:]]) - reference(t)).max() for t in items[:3]]
    print(f"  largest |logprob difference| between the two: {max(diffs):.2e}")
    n_batch = judge.pool.n_batch
    print(
        f"  logits memory: ours {judge.logits_chunk} x {n_vocab:,} floats = "
        f"{judge.logits_chunk * n_vocab * 4 / 2**20:.0f} MiB; the logits_all context: llama-cpp-python's "
        f"n_ctx x n_vocab scores = {args.n_ctx * n_vocab * 4 / 2**20:.0f} MiB plus llama.cpp's n_batch x n_vocab "
        f"output buffer = {n_batch * n_vocab * 4 / 2**20:.0f} MiB"
    )

    msgs = [
        {"role": "system", "content": items[0][:1200]},
        {"role": "user", "content": "Does the feature fire on month names? Answer Yes or No."},
    ]

    def one_chat(ours: bool, i: int) -> float:
        m = [msgs[0], {"role": "user", "content": msgs[1]["content"] + f" (case {i})"}]
        start = time.perf_counter()
        if ours:
            asyncio.run(judge.chat(m, max_tokens=1, logprobs=5))
        else:  # llama-cpp-python's own chat, whose logprobs need the logits_all context
            second.create_chat_completion(messages=m, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
        return time.perf_counter() - start

    for ours in (True, False):
        one_chat(ours, -1)
    a = min(one_chat(True, i) for i in range(8))
    b = min(one_chat(False, i) for i in range(8))
    print(
        f"  one-token chat with logprobs (shared prefix): judge {1000 * a:.1f} ms, logits_all context "
        f"{1000 * b:.1f} ms (x{b / a:.2f})"
    )
    second.close()
    asyncio.run(judge.aclose())


if __name__ == "__main__":
    main()
