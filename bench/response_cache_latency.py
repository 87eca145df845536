"""Response cache latency: why its SQLite work runs inline on the event loop and not in a worker thread.

    python bench/response_cache_latency.py [--n 2000] [--repeats 5]

Times, on this machine, the response cache's two SQLite operations as the cache runs them (a lookup
by key; an insert with its commit, in WAL mode with synchronous=NORMAL, one connection), and the
round trip of an empty call through `asyncio.to_thread`, which is what moving them off the event
loop would add to each. Prints the median and 99th percentile of each, in microseconds, as the
median over `--repeats` rounds with the spread of those rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from autointerp.llm.base import Reply
from autointerp.llm.cache import CachedJudge, cache_key, encode_reply
from autointerp.llm.scripted import ScriptedJudge


def _times_us(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def one_round(folder: Path, n: int) -> dict[str, tuple[float, float]]:
    judge = CachedJudge(ScriptedJudge(lambda m: "Yes"), folder / "responses.sqlite", namespace="bench")
    encoded = encode_reply(Reply(text="Yes"))
    keys = [
        cache_key(
            "bench",
            [{"role": "user", "content": f"prompt {i}"}],
            max_tokens=1,
            temperature=0.0,
            logprobs=0,
            schema=None,
        )
        for i in range(n)
    ]
    inserts = _times_us(lambda i: judge._put(keys[i], encoded), n)
    lookups = _times_us(lambda i: judge._get(keys[i]), n)

    async def hops() -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            await asyncio.to_thread(lambda: None)
            out.append((time.perf_counter() - start) * 1e6)
        return out

    thread = asyncio.run(hops())
    asyncio.run(judge.aclose())
    return {
        "lookup": _percentiles(lookups),
        "insert + commit": _percentiles(inserts),
        "to_thread": _percentiles(thread),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="operations of each kind per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each in a fresh SQLite file")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(one_round(Path(tmp), args.n))
    print(f"{args.n} operations per round, {args.repeats} rounds; microseconds, median over rounds [min-max]")
    for name in rounds[0]:
        for which, label in ((0, "median"), (1, "p99")):
            values = [r[name][which] for r in rounds]
            print(f"  {name:>16} {label:>6}: {statistics.median(values):8.1f}  [{min(values):.1f}-{max(values):.1f}]")


if __name__ == "__main__":
    main()
