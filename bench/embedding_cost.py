"""What the embedding scorer and hard negatives cost, and how well MiniLM separates a planted latent.

    python bench/embedding_cost.py [--latents 10] [--n-tokens 32768] [--pool 500]

Caches the default corpus through the default SAE (in a temp folder), then times, with the bundled
all-MiniLM-L6-v2 on CPU: loading the model; building each latent's record with random, similar
and cooccurring negatives (similar includes embedding the shared candidate pool once); and the
embedding scorer on each record, both on a cold embedder and on the one the sampler already used
(whose per-text cache holds the held-out examples). Last, the AUROC of a right and a wrong
explanation of the planted month latent (tests/helpers/planted.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import planted_record  # noqa: E402

from autointerp.cache.store import ActivationCache  # noqa: E402
from autointerp.config import RunConfig  # noqa: E402
from autointerp.embeddings import load_embedder  # noqa: E402
from autointerp.pipeline import select_latents  # noqa: E402
from autointerp.records import Explanation  # noqa: E402
from autointerp.results import RunFiles  # noqa: E402
from autointerp.sampling import Sampler, SamplingSettings, token_decoder  # noqa: E402
from autointerp.scorers import EmbeddingScorer  # noqa: E402
from autointerp.stages.cache_stage import cache_stage  # noqa: E402
from autointerp.stages.subject_loading import load_tokenizer  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=10)
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--pool", type=int, default=500, help="candidate windows for similar negatives")
    args = parser.parse_args()

    embedder = load_embedder("default")
    _, load_s = timed(lambda: embedder.encode(["warm up"]))
    print(f"{embedder.name}: import + load + first encode {load_s:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        files = RunFiles(Path(tmp))
        files.prepare()
        config = RunConfig(n_tokens=args.n_tokens, max_latents=args.latents)
        cache_stage(files, config, progress=False)
        cache = ActivationCache(files.cache)
        decode = token_decoder(load_tokenizer(config))
        latents, _ = select_latents(cache, config)
        print(f"cache: {cache.meta.n_tokens:,} tokens, {cache.meta.n_windows:,} windows; {len(latents)} latents")

        records = {}
        for kind in ("random", "similar", "cooccurring"):
            settings = SamplingSettings(**{**config.sampling.__dict__, "negatives": kind, "similar_pool": args.pool})
            sampler = Sampler(cache, decode, settings, embedder=embedder if kind == "similar" else None)
            extra = ""
            if kind == "similar":
                _, pool_s = timed(sampler.pool.get)
                extra = f" (+ {pool_s:.1f} s once, to embed the pool of {args.pool} windows)"
            out, seconds = timed(lambda s=sampler: [s.record(i) for i in latents])
            records[kind] = out
            print(f"  records with {kind:11s} negatives: {1000 * seconds / len(latents):7.1f} ms/latent{extra}")

        held_out = sum(len(r.test) + len(r.negatives) for r in records["similar"][1:])
        for label, scorer in (
            ("cold embedder", EmbeddingScorer(load_embedder("default"))),
            ("embedder the sampler used", EmbeddingScorer(embedder)),
        ):
            asyncio.run(scorer(records["similar"][0], Explanation(records["similar"][0].latent, "x", "b"), None))
            before = scorer.embedder.encoded
            _, seconds = timed(
                lambda sc=scorer: [
                    asyncio.run(sc(r, Explanation(r.latent, f"words about topic {r.latent.index}", "b"), None))
                    for r in records["similar"][1:]
                ]
            )
            n = max(1, len(records["similar"]) - 1)
            texts = (scorer.embedder.encoded - before) / n
            print(
                f"  embedding scorer, {label:25s}: {1000 * seconds / n:7.1f} ms/latent, {texts:.0f} of "
                f"{1 + held_out / n:.0f} texts encoded/latent, 0 judge calls"
            )

    record = planted_record()
    scorer = EmbeddingScorer(embedder)
    for text in ("names of calendar months, such as March or October", "names of animals, such as cat or dog"):
        score = asyncio.run(scorer(record, Explanation(record.latent, text, "b"), None))
        print(f"planted month latent, {text!r}: AUROC {score.metrics['auroc']:.3f}")


if __name__ == "__main__":
    main()
