"""The HTTP service under load, against calling the scorer in process.

    python bench/serve_load.py [--concurrency 1,8,64] [--requests 120] [--rounds 3]

Builds a tiny run (the tests' tiny model and SAE, 10 + 10 held-out examples per latent), starts a real
`autointerp serve` (uvicorn, API key, job table) whose judge is a scripted one that answers in
microseconds, and sends detection score requests of new labels from N concurrent clients, each a
POST then a long-poll GET of the job until it is done (the client's own cost is counted). The same
labels are scored in process with `score_label` by N concurrent tasks, with the same judge behind
the same gate and response cache: the work the service does for a request, without HTTP, job table
or queue. Rounds alternate service and in-process, so a busy machine slows both alike; printed are
requests/s and p50/p99 latency (median over rounds, [min-max] of the rounds), and the overhead: the
service's p50 minus the in-process p50. Goal: <= 10 ms at p50. Last, requests for labels already
scored (answered from the run's log, no scorer run) give the service's own floor per request.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.report_fixtures import judge, make_run  # noqa: E402
from helpers.serve_helpers import KEY, copy_run, start_server  # noqa: E402
from helpers.tiny_subjects import make_tiny_llama  # noqa: E402

from autointerp.client import AsyncClient  # noqa: E402
from autointerp.config import load_config  # noqa: E402
from autointerp.llm.judges import wrap_judge  # noqa: E402
from autointerp.llm.scripted import ScriptedJudge  # noqa: E402
from autointerp.results import RunFiles  # noqa: E402
from autointerp.stages.latent_stages import score_label  # noqa: E402
from autointerp.stages.open_run import OpenRun  # noqa: E402

LATENTS = (0, 1, 4, 5, 9, 13, 14, 17, 22, 23, 27)  # the tiny run's latents that fire often enough
_labels = itertools.count()


def new_label() -> str:
    return f"the words: river, stone {next(_labels)}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(concurrency: int, n: int, one) -> tuple[float, list[float]]:
    """`n` calls of `one(i)` from `concurrency` workers; (seconds, latency of each call)."""
    todo = iter(range(n))
    latencies: list[float] = []

    async def worker() -> None:
        for i in todo:
            start = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


async def service_round(url: str, concurrency: int, n: int, labels: list[str] | None = None):
    async with AsyncClient(url, KEY, timeout=120) as client:

        async def one(i: int) -> None:
            label = labels[i] if labels else new_label()
            job = await client.score("load", LATENTS[i % len(LATENTS)], label, scorers=["detection"])
            if job["status"] not in ("done", "failed"):
                job = await client.job(job["id"], wait=60)
            assert job["status"] == "done", job

        return await drive(concurrency, n, one)


class InProcess:
    def __init__(self, folder: Path, cache_file: Path):
        config, _ = load_config(folder / "config.json")
        config.response_cache_path = str(cache_file)
        self.run = OpenRun(RunFiles(folder), config)
        self.judge = wrap_judge(ScriptedJudge(judge, model="scripted-judge"), config, namespace="bench", slots=1)

    async def round(self, concurrency: int, n: int):
        async def one(i: int) -> None:
            (row,) = await score_label(self.run, LATENTS[i % len(LATENTS)], new_label(), ["detection"], self.judge)
            assert row.status == "ok"

        return await drive(concurrency, n, one)


def summary(rounds: list[tuple[float, list[float]]], n: int) -> dict[str, list[float]]:
    return {
        "rps": [n / seconds for seconds, _ in rounds],
        "p50": [1000 * percentile(lat, 0.5) for _, lat in rounds],
        "p99": [1000 * percentile(lat, 0.99) for _, lat in rounds],
    }


def spread(values: list[float], fmt: str = ".1f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--requests", type=int, default=120, help="requests per round (at least 2 per client)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="the server's --workers")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_run(root / "built", make_tiny_llama())
        copy_run(root / "built", root / "runs" / "load")
        copy_run(root / "built", root / "inproc")
        options = ("--workers", str(args.workers), "--max-queue", "1024", "--log-level", "warning")
        server = start_server(root / "runs", root / "state", *options)
        local = InProcess(root / "inproc", root / "inproc-responses.sqlite")
        try:
            asyncio.run(service_round(server.url, 1, 4))  # warm up: the run and the judge are loaded
            asyncio.run(local.round(1, 4))
            print(f"{args.requests} detection score requests of new labels per round (20 judge calls each), ")
            print(f"{args.rounds} rounds; server --workers {args.workers}; latency in ms, median [min-max] of rounds")
            print(
                f"{'clients':>7} | {'service req/s':>17} {'p50':>17} {'p99':>17} | "
                f"{'in-process req/s':>17} {'p50':>17} {'p99':>17} | {'overhead p50':>17}"
            )
            for level in levels:
                n = max(args.requests, 2 * level)
                served, inproc = [], []
                for _ in range(args.rounds):
                    served.append(asyncio.run(service_round(server.url, level, n)))
                    inproc.append(asyncio.run(local.round(level, n)))
                s, p = summary(served, n), summary(inproc, n)
                overhead = [a - b for a, b in zip(s["p50"], p["p50"], strict=True)]
                print(
                    f"{level:>7} | {spread(s['rps']):>17} {spread(s['p50']):>17} {spread(s['p99']):>17} | "
                    f"{spread(p['rps']):>17} {spread(p['p50']):>17} {spread(p['p99']):>17} | {spread(overhead):>17}"
                )
            labels = [new_label() for _ in range(len(LATENTS))]
            asyncio.run(service_round(server.url, 1, len(labels), labels))  # scored once...
            repeated = [labels[i % len(labels)] for i in range(args.requests)]
            again = [asyncio.run(service_round(server.url, 1, args.requests, repeated)) for _ in range(args.rounds)]
            r = summary(again, args.requests)
            print(
                f"labels already scored, 1 client (answered from the run's log, no scorer run): "
                f"{spread(r['rps'])} req/s, p50 {spread(r['p50'], '.2f')} ms, p99 {spread(r['p99'], '.2f')} ms"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
