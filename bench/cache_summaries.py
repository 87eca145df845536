"""What the tie rule of the per-latent summaries costs: `update_state` per batch, as the builder runs it
(`keep_best`: ties go to the earlier window, so that caches merged from Ray shards equal one pass)
against the same fold with a bare `topk` (which orders ties either way).

    python bench/cache_summaries.py [--latents 4608,16384] [--rows 8] [--repeats 5]

Activations are random and sparse (about 0.6% of (token, latent) pairs fire, as a TopK SAE's do), in
batches of `--rows` rows of 256 tokens, windows of 32. Each repeat folds 4 batches into a fresh state
each way, in alternating order; prints ms per batch, mean and standard error over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from autointerp.cache import build
from autointerp.cache.store import LatentState


def topk_rule(values: torch.Tensor, windows: torch.Tensor, k: int, *, largest: bool):
    best, order = values.topk(k, dim=1, largest=largest)
    return best, windows.gather(1, order)


def per_batch(acts: torch.Tensor, num_latents: int, batches: int) -> float:
    state = LatentState.empty(num_latents, 64, 256)
    windows = acts.shape[0] * acts.shape[1] // 32
    start = time.perf_counter()
    for i in range(batches):
        build.update_state(state, acts, i * windows, 32, 0)
    return (time.perf_counter() - start) / batches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", default="4608,16384")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rule = build.keep_best
    for num_latents in (int(n) for n in args.latents.split(",")):
        g = torch.Generator().manual_seed(0)
        acts = torch.relu(torch.randn(args.rows, 256, num_latents, generator=g) - 2.5)
        times: dict[str, list[float]] = {"keep_best": [], "topk": []}
        for r in range(args.repeats):
            for name in ("keep_best", "topk") if r % 2 == 0 else ("topk", "keep_best"):
                build.keep_best = rule if name == "keep_best" else topk_rule  # type: ignore[assignment]
                times[name].append(per_batch(acts, num_latents, 4))
        build.keep_best = rule
        line = ", ".join(
            f"{name} {statistics.mean(t):.0f} ± {statistics.stdev(t) / np.sqrt(len(t)):.0f} ms/batch"
            for name, t in times.items()
        )
        ratio = statistics.mean(times["keep_best"]) / statistics.mean(times["topk"])
        print(f"{num_latents} latents, {args.rows} rows x 256 tokens: {line}; ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
