"""What each scorer costs per latent: judge calls, prompt and completion tokens, seconds.

    python bench/scorer_costs.py [--judge smollm2] [--latents 2] [--n 10] [--scorers all]

Caches the default corpus through SmolLM2 and the shipped SAE once (in --work), labels the first
eligible latents with the judge, then runs every scorer on each latent with a real judge and counts
what it asked for (re-asks of unreadable answers included, response cache off). Held-out examples
are --n activating + --n silent; calls that scale with them are also shown per held-out example and
extrapolated to the defaults (50 + 50). The figures in the README come from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _default_run import WORK, default_run

from autointerp.cache.store import ActivationCache
from autointerp.config import RunConfig
from autointerp.explainers import explain
from autointerp.llm.judges import make_judge
from autointerp.sampling import Sampler, token_decoder
from autointerp.scorers import scorer_names
from autointerp.stages.open_run import make_scorers
from autointerp.stages.subject_loading import load_tokenizer

DEFAULT_HELD_OUT = 100  # 50 activating + 50 silent


async def measure(config: RunConfig, cache: ActivationCache, latents: list[int], names: list[str], judge) -> None:
    sampler = Sampler(cache, token_decoder(load_tokenizer(config)), config.sampling)
    scorers = make_scorers(config, names, cache)
    rows: dict[str, list[tuple[int, int, int, int, float, int]]] = {s.name: [] for s in scorers}
    for latent in latents:
        record = sampler.record(latent)
        label = await explain(record, judge, config.explain)
        print(f"  latent {latent}: {label.text[:80]!r} ({label.usage.calls} explainer calls)", flush=True)
        for scorer in scorers:
            start = time.perf_counter()
            score = await scorer(record, label, judge)
            u = score.usage
            rows[scorer.name].append(
                (
                    u.calls,
                    u.prompt_tokens,
                    u.completion_tokens,
                    score.n_failed,
                    time.perf_counter() - start,
                    len(record.test) + len(record.negatives),
                )
            )
    n_held = statistics.mean(r[5] for rs in rows.values() for r in rs)
    print(
        f"\nper latent, mean over {len(latents)} latents with {n_held:.0f} held-out examples each "
        f"(judge {judge.model}):"
    )
    print(
        f"  {'scorer':20s} {'calls':>6s} {'calls/example':>13s} {'prompt tok':>10s} {'compl tok':>9s} "
        f"{'unreadable':>10s} {'seconds':>8s} {'calls at 50+50':>15s}"
    )
    for name, rs in rows.items():
        calls = statistics.mean(r[0] for r in rs)
        per_example = calls / n_held
        scaled = (
            per_example * DEFAULT_HELD_OUT
            if name.startswith(("detection", "fuzzing", "simulation", "surprisal"))
            else calls
        )
        print(
            f"  {name:20s} {calls:6.1f} {per_example:13.2f} {statistics.mean(r[1] for r in rs):10.0f} "
            f"{statistics.mean(r[2] for r in rs):9.0f} {statistics.mean(r[3] for r in rs):10.1f} "
            f"{statistics.mean(r[4] for r in rs):8.1f} {scaled:15.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="smollm2")
    parser.add_argument("--latents", type=int, default=2)
    parser.add_argument("--n", type=int, default=10, help="held-out activating and silent examples")
    parser.add_argument("--scorers", default="all", help="comma-separated, or all")
    parser.add_argument("--n-tokens", type=int, default=40_000)
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    config, cache, latents = default_run(
        args.work, judge=args.judge, n_tokens=args.n_tokens, n_held_out=args.n, n_latents=args.latents
    )
    names = scorer_names() if args.scorers == "all" else args.scorers.split(",")
    judge = make_judge(args.judge, config)
    try:
        asyncio.run(measure(config, cache, latents, names, judge))
    finally:
        asyncio.run(judge.aclose())


if __name__ == "__main__":
    main()
