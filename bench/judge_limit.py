"""How close the embedded judge runs to llama.cpp's own prompt-evaluation rate on this machine.

    python bench/judge_limit.py [--skip-run] [--latents 6] [--repeats 5] [--work DIR]

Prints, in one run:

(a) the llama.cpp build that is loaded: its file (which wheel: the venv's, or one put first on
    PYTHONPATH) and the instruction sets it was compiled with (`llama_print_system_info`);
(b) llama.cpp's own prompt-evaluation rate for the default judge (Qwen2.5-Coder-1.5B Q4_K_M, as a run
    resolves it): after a ~300-token prefix decoded once, each repeat drops the KV entries past the
    prefix and decodes B new tokens in one llama_decode (logits for the last only), B = 32, 64, 128,
    512, with the sizes interleaved so a change of load hits them alike; tokens/s from llama.cpp's
    own counters (t_p_eval_ms, n_p_eval) and from wall time, mean ± standard error over repeats, and
    llama.cpp's best repeat (on a shared machine, the one least slowed by other work);
(c) our judge in a real scoring run: the first `--latents` default latents as `make demo` takes
    them (10 + 10 held-out examples each, detection + fuzzing + the shuffled-label control, labels
    by the default explainer), response cache off, through `autointerp.Run` and the judge a run
    makes; the scoring stage is timed (the judge is loaded and the labels written before), and the
    judge's own token counts are read from the run's scores log: computed prompt tokens (prompt -
    reused from the KV cache), seconds, computed tokens/s, and the ratio to (b)'s rate at the batch
    size nearest the mean computed tokens per call (mean and best). On a busy machine the rates
    of (b) swing with the load (two threads wait for each other): compare builds on a quiet one.

The activation cache and the labels stay in `--work` and are reused; the scores are made afresh
each time. `--skip-run` prints (a) and (b) only (about 2 minutes on 2 cores); (c) with 6 latents
takes about 15 minutes there. Compare builds by running it once per build, e.g. with an unzipped
wheel first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BATCHES = (32, 64, 128, 512)
PREFIX_TOKENS = 300
JUDGE = "qwen2.5-coder-1.5b"
WORK = "/tmp/autointerp-bench-judge-limit"
TEXT = (
    "The committee met on Tuesday to review the proposal for the new library, which would replace the "
    "old building near the river. Several members asked how the project would be paid for, and the "
    "treasurer explained that most of the money would come from a grant awarded last spring. "
)


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.mean(values), se


def load() -> str:
    """The 1, 5 and 15 minute load averages: a busy machine lowers every rate."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_info() -> None:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    print(f"(a) llama_cpp {llama_cpp.__version__} from {Path(llama_cpp.__file__).parent}")
    print(f"    {info}")


@dataclass
class Rates:
    """Tokens/s per batch size, one value per repeat: llama.cpp's counters and wall time."""

    counted: dict[int, list[float]] = field(default_factory=dict)
    wall: dict[int, list[float]] = field(default_factory=dict)

    def mean(self, batch: int) -> float:
        return statistics.mean(self.counted[batch])


def llama_rates(repeats: int, threads: int) -> Rates:
    import llama_cpp

    from autointerp.llm.assets import resolve_gguf

    path, _ = resolve_gguf(JUDGE)
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )
    ctx = llm._ctx.ctx
    tokens = llm.tokenize((TEXT * 40).encode())
    prefix, new = tokens[:PREFIX_TOKENS], tokens[PREFIX_TOKENS:]
    assert len(new) >= max(BATCHES), "the text is too short for the largest batch"
    llm.eval(prefix)  # the cached prefix every repeat decodes after

    def decode(batch: int) -> tuple[float, float]:
        llm._ctx.kv_cache_seq_rm(-1, PREFIX_TOKENS, -1)
        llm._batch.set_batch(new[:batch], n_past=PREFIX_TOKENS, logits_all=False)
        llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter()
        llm._ctx.decode(llm._batch)
        llama_cpp.llama_synchronize(ctx)
        wall = time.perf_counter() - start
        perf = llama_cpp.llama_perf_context(ctx)
        counted = perf.n_p_eval / (perf.t_p_eval_ms / 1000) if perf.n_p_eval and perf.t_p_eval_ms else math.nan
        return counted, batch / wall

    for batch in BATCHES:  # warm-up: first touches of the weights and the compute buffers
        decode(batch)
    rates = Rates()
    for _ in range(repeats):
        for batch in BATCHES:
            counted, wall = decode(batch)
            rates.counted.setdefault(batch, []).append(counted)
            rates.wall.setdefault(batch, []).append(wall)
    llm.close()
    return rates


def print_rates(rates: Rates, repeats: int, threads: int) -> None:
    print(f"(b) prompt evaluation after a cached {PREFIX_TOKENS}-token prefix, {threads} threads, {repeats} repeats:")
    print(f"    {'new tokens':>10}  {'tok/s (llama.cpp)':>17}  {'best':>5}  {'tok/s (wall)':>13}")
    for batch in BATCHES:
        counted, counted_se = mean_se(rates.counted[batch])
        best = max(rates.counted[batch])
        wall, wall_se = mean_se(rates.wall[batch])
        counted_text, wall_text = f"{counted:.1f} ± {counted_se:.1f}", f"{wall:.1f} ± {wall_se:.1f}"
        print(f"    {batch:>10}  {counted_text:>17}  {best:>5.1f}  {wall_text:>13}")


@dataclass
class Scoring:
    seconds: float
    calls: int
    prompt_tokens: int
    cached_prompt_tokens: int
    per_decode: float | None = None  # tokens per llama.cpp decode, where the judge counts them

    @property
    def computed(self) -> int:
        return self.prompt_tokens - self.cached_prompt_tokens


def scoring_run(work: Path, latents: int) -> Scoring:
    """Score the default latents as `make demo` does, through the public API and the judge a run makes."""
    from autointerp import Run
    from autointerp.llm.judges import make_judge
    from autointerp.records import Usage
    from autointerp.scorers.registry import find_scorer

    options = {"max_latents": latents, "n_test": 10, "n_negatives": 10, "no_cache": True}
    run = Run(work, quiet=True, echo=None, **options)
    run.cache()
    config = run.config
    judge = make_judge(config.judge, config)  # loaded before the clock starts; explainer and scorers share it
    run = Run(work, quiet=True, echo=None, judges={config.judge: judge}, **options)
    run.explain()  # kept in `work`: only the first run pays for the labels
    run.files.scores.unlink(missing_ok=True)  # every run scores afresh
    pool = engine_pool(judge)
    before = (pool.decoded_tokens, pool.decodes) if pool is not None else (0, 0)
    start = time.perf_counter()
    run.score()
    seconds = time.perf_counter() - start
    per_decode = None
    if pool is not None and pool.decodes > before[1]:
        per_decode = (pool.decoded_tokens - before[0]) / (pool.decodes - before[1])
    spent = Usage()
    for row in run.files.score_rows():
        scorer = find_scorer(row.scorer)
        if row.usage is not None and (scorer is None or scorer.needs_judge):
            spent.add(row.usage)
    return Scoring(seconds, spent.calls, spent.prompt_tokens, spent.cached_prompt_tokens, per_decode)


def engine_pool(judge: object) -> Any:
    """The in-process judge's KV sequence pool under the run's wrappers (gate, cache), if it has one."""
    while not hasattr(judge, "pool") and hasattr(judge, "inner"):
        judge = judge.inner
    return getattr(judge, "pool", None)


def print_scoring(scoring: Scoring, rates: Rates, latents: int) -> None:
    rate = scoring.computed / scoring.seconds
    per_call = scoring.computed / max(1, scoring.calls)
    # the rate to compare with is llama.cpp's at the size the judge decodes: a call's new tokens when it
    # decodes one call at a time, several calls' when it batches them
    size = scoring.per_decode if scoring.per_decode is not None else per_call
    nearest = min(BATCHES, key=lambda b: abs(math.log(b / max(size, 1))))
    print(
        f"(c) scoring {latents} default latents (detection + fuzzing + control, 10 + 10 examples, no response cache):"
    )
    print(
        f"    {scoring.calls} calls, {scoring.prompt_tokens:,} prompt tokens of which {scoring.cached_prompt_tokens:,}"
        f" reused: {scoring.computed:,} computed ({per_call:.0f} per call) in {scoring.seconds:.0f} s"
    )
    if scoring.per_decode is not None:
        print(f"    the judge decoded {scoring.per_decode:.0f} tokens a decode (calls batched together)")
    mean, best = rates.mean(nearest), max(rates.counted[nearest])
    print(
        f"    {rate:.1f} computed tok/s = {rate / mean:.2f}x llama.cpp's mean rate for {nearest} new tokens"
        f" ({mean:.1f} tok/s), {rate / best:.2f}x its best ({best:.1f} tok/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-run", action="store_true", help="print (a) and (b) only")
    parser.add_argument("--latents", type=int, default=6, help="latents of the scoring run (make demo's: 6)")
    parser.add_argument("--repeats", type=int, default=5, help="decodes per batch size")
    parser.add_argument("--work", default=WORK, help="the scoring run's folder (cache and labels are reused)")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    print(f"load average before: {load()}", flush=True)
    build_info()
    rates = llama_rates(args.repeats, threads)
    print_rates(rates, args.repeats, threads)
    sys.stdout.flush()
    if not args.skip_run:
        print_scoring(scoring_run(Path(args.work), args.latents), rates, args.latents)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
