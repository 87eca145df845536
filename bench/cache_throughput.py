"""Caching throughput against the bare subject-model forward pass, and peak memory at two corpus sizes.

    python bench/cache_throughput.py [--tokens 16384] [--sizes 32768,131072]

Prints, from one run on this machine:
- tokens/s of a full forward pass of the subject model over the batches, of a forward pass cut at
  the hookpoint, and of caching (forward to the hookpoint + SAE encode + summaries + sparse writes)
  on the same batches; the ratios are what to compare across machines;
- the peak resident memory of a whole `autointerp cache` stage, in a fresh process, at two corpus
  sizes (the default corpus repeated as needed): flat memory means the cache streams.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rows_of(n_tokens: int, ctx_len: int = 256):
    """Rows from the default corpus, cycled so any size can be asked for."""
    from autointerp.corpus import iter_documents, iter_rows, resolve_corpus
    from autointerp.subjects.model import load_subject

    tok = load_subject(None).tokenizer
    docs = itertools.cycle(list(iter_documents(resolve_corpus(None))))
    rows = iter_rows(
        docs, lambda d: tok(d, add_special_tokens=False)["input_ids"], ctx_len=ctx_len, separator=tok.eos_token_id
    )
    return list(itertools.islice(rows, n_tokens // ctx_len))


def throughput(n_tokens: int, batch_rows: int) -> dict[str, float]:
    from autointerp.cache.build import CacheSettings, build_cache
    from autointerp.cache.store import CacheMeta
    from autointerp.subjects.attach import open_dictionary
    from autointerp.subjects.hookpoints import capture
    from autointerp.subjects.model import load_subject

    subject = load_subject(None)
    model = subject.model
    encoder, hp = open_dictionary(model, "default")
    rows = rows_of(n_tokens)
    batches = [np.stack(rows[i : i + batch_rows]) for i in range(0, len(rows), batch_rows)]
    tokens = sum(b.size for b in batches)

    def timed(fn) -> float:
        fn(batches[0])  # warm-up
        start = time.perf_counter()
        for b in batches:
            fn(b)
        return tokens / (time.perf_counter() - start)

    with torch.inference_mode():
        full = timed(lambda b: model(torch.from_numpy(b).long(), use_cache=False))
        cut = timed(lambda b: capture(model, hp, torch.from_numpy(b).long()))
    with tempfile.TemporaryDirectory() as tmp:
        meta = CacheMeta(
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
        )
        start = time.perf_counter()
        build_cache(
            Path(tmp),
            iter(rows),
            model=model,
            hookpoint=hp,
            encoder=encoder,
            meta=meta,
            settings=CacheSettings(batch_rows=batch_rows),
            progress=False,
        )
        cached = tokens / (time.perf_counter() - start)
    return {"tokens": tokens, "full_forward_tok_s": full, "forward_to_hookpoint_tok_s": cut, "cache_tok_s": cached}


def peak_memory(n_tokens: int) -> dict[str, float]:
    """Run the cache stage in a fresh process over a corpus of n_tokens; report its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        from autointerp.corpus import iter_documents, resolve_corpus

        docs = list(iter_documents(resolve_corpus(None)))
        # ~1.3 tokens per word on this corpus; write enough repeats to exceed n_tokens
        words = sum(len(d.split()) for d in docs)
        repeats = int(n_tokens / (words * 1.2)) + 1
        corpus.write_text("\n".join(docs * repeats) + "\n")
        code = (
            "import resource, sys; from autointerp.cli import main; "
            f"rc = main(['cache', '--out', {str(Path(tmp) / 'run')!r}, '--corpus', {str(corpus)!r}, "
            f"'--n-tokens', '{n_tokens}', '--quiet']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
        )
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        meta = json.loads((Path(tmp) / "run" / "cache" / "meta.json").read_text())
        disk = sum(f.stat().st_size for f in (Path(tmp) / "run" / "cache").iterdir())
        return {
            "tokens": meta["n_rows"] * meta["ctx_len"],
            "peak_rss_mb": int(out.stdout.split()[-1]) / 1024,
            "seconds": seconds,
            "cache_disk_mb": disk / 2**20,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens for the throughput comparison")
    parser.add_argument("--batch-rows", type=int, default=8)
    parser.add_argument("--sizes", default="32768,131072", help="two corpus sizes (tokens) for peak memory")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    t = throughput(args.tokens, args.batch_rows)
    print(
        f"throughput over {t['tokens']} tokens (batches of {args.batch_rows} x 256, {torch.get_num_threads()} "
        f"threads, bf16 subject, default SAE):"
    )
    print(f"  full forward pass      {t['full_forward_tok_s']:8.0f} tok/s")
    print(f"  forward to hookpoint   {t['forward_to_hookpoint_tok_s']:8.0f} tok/s")
    print(f"  caching                {t['cache_tok_s']:8.0f} tok/s")
    print(f"  caching / full forward        {t['cache_tok_s'] / t['full_forward_tok_s']:.2f}x")
    print(f"  caching / forward to hookpoint {t['cache_tok_s'] / t['forward_to_hookpoint_tok_s']:.2f}x")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [peak_memory(n) for n in sizes]
    print("peak memory of `autointerp cache` (fresh process, model + SAE loaded):")
    for r in results:
        print(
            f"  {r['tokens']:>8} tokens: peak RSS {r['peak_rss_mb']:7.0f} MB, cache on disk "
            f"{r['cache_disk_mb']:6.1f} MB, {r['seconds']:.0f} s"
        )
    grow = results[1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
    ratio = results[1]["tokens"] / results[0]["tokens"]
    print(f"  {ratio:.1f}x the tokens -> peak RSS {grow:+.0f} MB")


if __name__ == "__main__":
    main()
