"""Caching several hookpoints in one forward pass against one pass per hookpoint.

    python bench/hookpoints_one_pass.py [--hookpoints layers.3,layers.9,layers.15] [--tokens 8192] [--repeats 3]

The subject is the default model (SmolLM2-135M, 30 blocks), the corpus the default one; each hookpoint
gets a random TopK SAE of the default SAE's size (4,608 latents, k=16; the weights do not change the
cost). Each repeat caches the same rows twice, in alternating order: once with every hookpoint in one
pass (`build_caches` over all of them, the way `--hookpoints` runs), and once per hookpoint (one
`build_caches` each, the way separate runs would). Prints tokens/s of each way and the speedup, by
wall-clock time and by this process's CPU time (on a machine shared with other jobs the wall clock
is noisy; the CPU time is the work done), as mean and standard error over the repeats, and the
speedup the forward pass alone predicts (the blocks each way runs; the SAE encoding, the summaries
and the writes cost the same either way).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.tiny_subjects import write_sparsify_sae  # noqa: E402

from autointerp.cache.build import CacheSettings, build_caches  # noqa: E402
from autointerp.cache.store import CacheMeta  # noqa: E402
from autointerp.subjects.attach import open_dictionaries  # noqa: E402
from autointerp.subjects.model import load_subject  # noqa: E402
from autointerp.subjects.sources import locate_dictionaries  # noqa: E402


def rows_of(subject, n_tokens: int, ctx_len: int) -> list[np.ndarray]:
    """Rows from the default corpus, cycled so any size can be asked for."""
    from autointerp.corpus import iter_documents, iter_rows, resolve_corpus

    tok = subject.tokenizer
    docs = itertools.cycle(list(iter_documents(resolve_corpus(None))))
    rows = iter_rows(
        docs, lambda d: tok(d, add_special_tokens=False)["input_ids"], ctx_len=ctx_len, separator=tok.eos_token_id
    )
    return list(itertools.islice(rows, n_tokens // ctx_len))


def mean_se(xs: list[float]) -> str:
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):8.0f} +- {se:5.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hookpoints", default="layers.3,layers.9,layers.15")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-rows", type=int, default=8)
    parser.add_argument("--num-latents", type=int, default=4608)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    names = args.hookpoints.split(",")

    subject = load_subject(None)
    model = subject.model
    d_in = model.config.hidden_size
    rows = rows_of(subject, args.tokens, ctx_len=256)
    tokens = len(rows) * 256
    settings = CacheSettings(batch_rows=args.batch_rows)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, name in enumerate(names):
            write_sparsify_sae(root / "saes" / name, d_in=d_in, num_latents=args.num_latents, k=16, seed=i)
        opened = open_dictionaries(model, locate_dictionaries(str(root / "saes"), names), names)

        def targets(which):
            return [
                (
                    hp,
                    encoder,
                    CacheMeta(
                        model=subject.name,
                        dictionary=encoder.name,
                        hookpoint=hp.name,
                        corpus="bench",
                        num_latents=encoder.num_latents,
                        ctx_len=256,
                        window_len=32,
                        top_k=64,
                        sample_size=256,
                        seed=0,
                        max_tokens=tokens,
                    ),
                )
                for encoder, hp in which
            ]

        def one_pass(out: Path) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            build_caches(out, iter(rows), model=model, targets=targets(opened), settings=settings, progress=False)
            return time.perf_counter() - wall, time.process_time() - cpu

        def per_hookpoint(out: Path) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            for i, pair in enumerate(opened):
                build_caches(out / str(i), iter(rows), model=model, targets=targets([pair]), settings=settings,
                             progress=False)  # fmt: skip
            return time.perf_counter() - wall, time.process_time() - cpu

        build_caches(root / "warm", iter(rows[:8]), model=model, targets=targets(opened[:1]), settings=settings,
                     progress=False)  # fmt: skip
        together, separate = [], []
        for r in range(args.repeats):
            ways = [(one_pass, together), (per_hookpoint, separate)]
            for fn, times in ways if r % 2 == 0 else ways[::-1]:
                times.append(fn(root / f"{fn.__name__}-{r}"))

    blocks = [int(hp.module_path.split(".")[1]) + 1 for _, hp in opened]
    print(
        f"caching {tokens} tokens at {len(names)} hookpoints ({', '.join(names)}) of {subject.name}, "
        f"{args.num_latents} latents each, batches of {args.batch_rows} x 256, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats in alternating order (mean +- standard error):"
    )
    for k, clock in enumerate(("wall clock", "CPU time")):
        print(f"  by {clock}:")
        print(f"    one pass, every hookpoint   {mean_se([tokens / t[k] for t in together])} tok/s")
        print(f"    one pass per hookpoint      {mean_se([tokens / t[k] for t in separate])} tok/s")
        ratios = [s[k] / t[k] for s, t in zip(separate, together, strict=True)]
        se = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
        print(f"    speedup of one pass         {statistics.mean(ratios):.2f}x +- {se:.2f} (per repeat: "
              f"{', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    print(
        f"  blocks run: {max(blocks)} in one pass, {sum(blocks)} in separate passes "
        f"(forward alone: {sum(blocks) / max(blocks):.2f}x)"
    )


if __name__ == "__main__":
    main()
