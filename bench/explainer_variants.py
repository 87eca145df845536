"""Which explainer prompt gives labels that score better, on real latents of the embedded default.

    python bench/explainer_variants.py [--latents 4] [--n 20] [--variants default,token_counts]

Caches the default corpus through SmolLM2 and the shipped SAE once (in --work), then for each
variant labels the same first eligible latents with the default judge and scores every label by
detection and fuzzing on the same held-out examples (--n activating + --n silent each). Prints the
labels and the mean AUROC per variant, so a prompt change is judged by the scores it earns, not by
how its labels read.

Variants: default (marked excerpts only), token_counts (plus the most frequent marked tokens),
activations (plus 0-10 activation values), top (explainer sees the top windows, not quantiles).
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
from autointerp.scorers import ClassifierSettings, DetectionScorer, FuzzingScorer
from autointerp.stages.subject_loading import load_tokenizer

VARIANTS = {
    "default": {},
    "token_counts": {"explain.token_counts": True},
    "activations": {"explain.show_activations": True},
    "top": {"sampling.train_type": "top"},
}


def configured(base: RunConfig, changes: dict[str, object]) -> RunConfig:
    from autointerp.config import set_field

    config = RunConfig.from_dict(base.to_dict())
    for name, value in changes.items():
        set_field(config, name, value)
    return config


async def run_variant(name: str, config: RunConfig, cache: ActivationCache, latents: list[int], judge) -> None:
    sampler = Sampler(cache, token_decoder(load_tokenizer(config)), config.sampling)
    scorers = [DetectionScorer(ClassifierSettings.of(config)), FuzzingScorer(ClassifierSettings.of(config))]
    aucs: dict[str, list[float]] = {s.name: [] for s in scorers}
    start = time.perf_counter()
    for latent in latents:
        record = sampler.record(latent)
        expl = await explain(record, judge, config.explain)
        line = [f"    {latent:5d} {expl.text[:70]!r}"]
        for scorer in scorers:
            score = await scorer(record, expl, judge)
            auc = score.metrics.get("auroc")
            if auc is not None:
                aucs[scorer.name].append(auc)
            line.append(f"{scorer.name} {auc if auc is None else round(auc, 3)}")
        print("  ".join(line), flush=True)
    means = ", ".join(f"{k} AUROC {statistics.mean(v):.3f}" for k, v in aucs.items() if v)
    print(f"  {name}: {means} ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=4)
    parser.add_argument("--n", type=int, default=20, help="held-out activating and silent examples per scorer")
    parser.add_argument("--variants", default="default,token_counts")
    parser.add_argument("--judge", default="qwen2.5-coder-1.5b")
    parser.add_argument("--n-tokens", type=int, default=40_000)
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    base, cache, latents = default_run(
        args.work, judge=args.judge, n_tokens=args.n_tokens, n_held_out=args.n, n_latents=args.latents
    )
    judge = make_judge(args.judge, base)
    print(f"{len(latents)} latents {latents}, judge {judge.model}, {args.n}+{args.n} examples per scorer")
    try:
        for name in args.variants.split(","):
            print(f"variant {name}:", flush=True)
            asyncio.run(run_variant(name, configured(base, VARIANTS[name]), cache, latents, judge))
    finally:
        asyncio.run(judge.aclose())


if __name__ == "__main__":
    main()
