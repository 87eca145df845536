"""Ray scaling: latents/s with 1 and 2 Ray workers against a judge with a fixed latency per call, and
the cost of the Ray path against a plain run on one machine.

    python bench/ray_scaling.py [--latents 16] [--latency 0.05] [--repeats 3]

The judge is a local OpenAI-compatible HTTP server (the tests' fault server) that sleeps `--latency`
seconds before each answer, as a remote model would; it runs in this process on its own threads. The
run folder (default model and SAE over `--n-tokens` of the default corpus) is cached once; every timed
run explains and scores (detection + fuzzing, with shuffled-label controls) the same latents in a fresh
copy of it, with the response cache off. Each Ray configuration gets its own local cluster
(`num_cpus` = workers), warmed by one untimed run (Ray's own processes start, files are read once);
the figures are the mean and standard deviation over the timed repeats. Each run starts its worker
actors afresh (they import the code and make their judges), so the timed runs include that fixed cost,
which weighs less the more latents a run has. The one-off costs (starting the cluster, the first run)
are printed apart: a cluster lives longer than one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.fault_server import FaultServer  # noqa: E402

from autointerp.config import RunConfig  # noqa: E402
from autointerp.distributed.latents import RayOptions, run_latent_stages  # noqa: E402
from autointerp.explainers import NAMES_KEY  # noqa: E402
from autointerp.results import RunFiles  # noqa: E402
from autointerp.sampling import SamplingSettings  # noqa: E402
from autointerp.stages.cache_stage import cache_stage  # noqa: E402
from autointerp.stages.latent_stages import latent_stages  # noqa: E402

STAGES = {"explain", "score"}


def sleeper(latency: float):
    def behaviour(request, n):
        time.sleep(latency)
        system = request["messages"][0]["content"]
        if "[EXPLANATION]" in system:  # the excerpts explainer style
            return ("ok", "They share a pattern.\n[EXPLANATION]: common English words")
        if system.startswith("You name what a list of tokens has in common"):  # the names style (the default)
            return ("ok", json.dumps({NAMES_KEY: "common English words"}))
        yes = "the" in request["messages"][-1]["content"]
        return ("ok", "Yes" if yes else "No", {"Yes": -0.4, "No": -1.1} if yes else {"No": -0.4, "Yes": -1.1})

    return behaviour


def fresh(base: Path, into: Path) -> RunFiles:
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(base, into, ignore=shutil.ignore_patterns("*.jsonl", "*.parquet", "shards"))
    files = RunFiles(into)
    files.prepare()
    return files


def mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the judge sleeps per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-tokens", type=int, default=16384)
    parser.add_argument("--examples", type=int, default=10, help="held-out activating and silent examples each")
    parser.add_argument("--judge-concurrency", type=int, default=8, help="requests in flight per worker")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp, FaultServer(sleeper(args.latency)) as server:
        root = Path(tmp)
        sampling = SamplingSettings(n_test=args.examples, n_negatives=args.examples)
        config = RunConfig(
            n_tokens=args.n_tokens,
            max_latents=args.latents,
            sampling=sampling,
            judge="openai:sleeper",
            judge_url=server.url,
            response_cache=False,
            judge_concurrency=args.judge_concurrency,
        )
        base = RunFiles(root / "base")
        base.prepare()
        cache_stage(base, config, progress=False)

        def plain() -> float:
            files = fresh(base.folder, root / "plain")
            start = time.perf_counter()
            summary = asyncio.run(latent_stages(files, config, STAGES, progress=False))
            assert summary.failed == 0 and summary.explained == args.latents, summary
            return time.perf_counter() - start

        def on_ray(workers: int) -> float:
            files = fresh(base.folder, root / f"ray{workers}")
            start = time.perf_counter()
            summary = run_latent_stages(files, config, STAGES, RayOptions(address=None), progress=False)
            assert summary.failed == 0 and summary.explained == args.latents, summary
            return time.perf_counter() - start

        calls_before = len(server.requests)
        plain()  # warm: the tokenizer and the code are loaded once in this process too
        calls = len(server.requests) - calls_before
        times = {"plain": [plain() for _ in range(args.repeats)]}
        one_off = {}
        for workers in (1, 2):
            start = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            one_off[workers] = (time.perf_counter() - start, on_ray(workers))
            times[f"ray x{workers}"] = [on_ray(workers) for _ in range(args.repeats)]
            ray.shutdown()

    n = args.latents
    print(
        f"{n} latents, {calls} judge calls per run ({calls / n:.0f} per latent), {args.latency * 1000:.0f} ms per "
        f"call, {args.judge_concurrency} in flight per worker; {args.repeats} timed runs each (mean ± sd)"
    )
    rates = {}
    for name, xs in times.items():
        rates[name] = [n / x for x in xs]
        print(f"  {name:8s} {mean_sd(xs)} s   {mean_sd(rates[name])} latents/s")
    base_rate = statistics.mean(rates["plain"])
    r1, r2 = statistics.mean(rates["ray x1"]), statistics.mean(rates["ray x2"])
    print(f"  speed-up, 2 Ray workers vs 1: {r2 / r1:.2f}x   (goal >= 1.8x)")
    print(f"  2 Ray workers vs the plain run: {r2 / base_rate:.2f}x")
    print(f"  overhead of the Ray path, 1 worker vs the plain run: {100 * (base_rate / r1 - 1):+.1f}%   (goal <= 10%)")
    for workers, (start, first) in one_off.items():
        print(f"  one-off, {workers} worker(s): cluster start {start:.1f} s, first run on cold workers {first:.1f} s")


if __name__ == "__main__":
    main()
