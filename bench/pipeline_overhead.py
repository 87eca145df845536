"""Pipeline overhead: latents per second with an instant scripted judge, so only our code is timed.

    python bench/pipeline_overhead.py [--latents 40] [--n-tokens 32768]

Caches the default corpus through the default SAE once (in a temp folder), then explains and scores
(detection + fuzzing, 50+50 examples each) with a judge that answers at once, and prints latents/s
and judge calls/s: the ceiling our own code puts on a fast server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import yes_no  # noqa: E402

from autointerp.cache.store import ActivationCache  # noqa: E402
from autointerp.config import RunConfig  # noqa: E402
from autointerp.explainers import NAMES_KEY  # noqa: E402
from autointerp.llm.scripted import ScriptedJudge  # noqa: E402
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents  # noqa: E402
from autointerp.results import RunFiles  # noqa: E402
from autointerp.sampling import Sampler, token_decoder  # noqa: E402
from autointerp.stages.cache_stage import cache_stage  # noqa: E402
from autointerp.stages.open_run import make_scorers  # noqa: E402
from autointerp.stages.subject_loading import load_tokenizer  # noqa: E402


def instant(messages):
    if "[EXPLANATION]" in messages[0]["content"]:  # the excerpts explainer style
        return "[EXPLANATION]: common words"
    if messages[0]["content"].startswith("You name what a list of tokens"):  # the names style (the default)
        return json.dumps({NAMES_KEY: "common words"})
    return yes_no(0.7 if "the" in messages[-1]["content"] else 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=40)
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = RunFiles(Path(tmp))
        files.prepare()
        config = RunConfig(n_tokens=args.n_tokens, max_latents=args.latents, concurrency=args.concurrency)
        cache_stage(files, config, progress=False)
        cache = ActivationCache(files.cache)
        sampler = Sampler(cache, token_decoder(load_tokenizer(config)), config.sampling)
        latents, _ = select_latents(cache, config)
        judge = ScriptedJudge(instant)
        worker = LatentWorker(
            files, config, sampler, judge, judge, make_scorers(config), {"explain", "score"}, RunSummary()
        )
        start = time.perf_counter()
        summary = asyncio.run(process_latents(latents, worker, concurrency=args.concurrency, progress=False))
        seconds = time.perf_counter() - start
    print(
        f"{summary.latents} latents ({summary.scored} scored) in {seconds:.1f} s with an instant judge, "
        f"concurrency {args.concurrency}:"
    )
    print(
        f"  {summary.latents / seconds:.1f} latents/s, {len(judge.calls) / seconds:.0f} judge calls/s "
        f"({len(judge.calls)} calls)"
    )


if __name__ == "__main__":
    main()
