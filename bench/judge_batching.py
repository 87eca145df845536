"""The embedded judge's calls one at a time against the same calls gathered as a scorer sends them.

    python bench/judge_batching.py [--latents 6] [--n 10] [--prefix-tokens T] [--rounds 2]

Records the judge calls that detection and fuzzing make on the embedded default's first `--latents`
latents (each labelled by its no-LLM tokens label, and again with another latent's label: the
shuffled control), without a model; then sends exactly those calls to the embedded judge two ways,
alternating for `--rounds` rounds, each round on a freshly loaded judge:

- `one at a time`: each call awaited before the next is sent (what the judge did before it batched:
  it still keeps several prefixes in its KV sequences);
- `gathered`: the calls one scorer made for one latent sent together (what a run does), which the
  judge decodes in shared batches.

Prints, per way: wall time, prompt tokens, tokens computed (not held by the cache or shared in a
batch), llama.cpp decodes, computed tokens per second; and how far the gathered answers' P(Yes)
lies from the one-at-a-time answers' (mean and max |difference| over all calls: llama.cpp's numerics
differ with where a prompt's KV sits in the cache and the batch it is decoded in).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _default_run import default_run  # noqa: E402

from autointerp.controls import donor_map  # noqa: E402
from autointerp.explainers import tokens_label  # noqa: E402
from autointerp.llm.base import Reply, TokenLogprob  # noqa: E402
from autointerp.llm.local import load_local_judge  # noqa: E402
from autointerp.records import Explanation, Usage  # noqa: E402
from autointerp.sampling import Sampler, token_decoder  # noqa: E402
from autointerp.stages.open_run import make_scorers  # noqa: E402
from autointerp.stages.subject_loading import load_tokenizer  # noqa: E402

WORK = "/tmp/autointerp-bench-labels"


@dataclass
class Recorder:
    """A judge that answers "Yes" at once and writes down every call, by the group it was sent in."""

    model: str = "recorder"
    supports_logprobs: bool = True
    group: int = 0
    calls: list[tuple[int, list[dict[str, str]], dict]] = field(default_factory=list)

    async def chat(self, messages, **kwargs) -> Reply:
        self.calls.append((self.group, messages, kwargs))
        top = {"Yes": -0.5, "No": -1.0}
        return Reply("Yes", [TokenLogprob("Yes", -0.5, top)], Usage(prompt_tokens=1, calls=1), "length")

    async def aclose(self) -> None:
        pass


def p_yes(reply: Reply) -> float:
    top = reply.logprobs[0].top if reply.logprobs else {}
    yes = sum(math.exp(v) for k, v in top.items() if k.strip().lower() == "yes")
    no = sum(math.exp(v) for k, v in top.items() if k.strip().lower() == "no")
    return yes / (yes + no) if yes + no > 0 else math.nan


async def record(args: argparse.Namespace) -> list[tuple[int, list[dict[str, str]], dict]]:
    config, cache, latents = default_run(
        args.work, judge="qwen2.5-coder-1.5b", n_tokens=args.n_tokens, n_held_out=args.n, n_latents=args.latents
    )
    if args.prefix_tokens is not None:
        config.scoring["classifier"] = {"prefix_tokens": args.prefix_tokens}
    sampler = Sampler(cache, token_decoder(load_tokenizer(config, cache.meta)), config.sampling)
    records = {i: sampler.record(i) for i in latents}
    labels = {i: tokens_label(records[i], config.explain) for i in latents}
    donors = donor_map([records[i].latent for i in latents], config.sampling.seed)
    recorder = Recorder()
    for scorer in make_scorers(config, ["detection", "fuzzing"], cache):
        for i in latents:
            for text in (labels[i], labels[donors[records[i].latent].index]):
                recorder.group += 1
                await scorer(records[i], Explanation(records[i].latent, text, "bench"), recorder)
    return recorder.calls


async def replay(calls, gathered: bool) -> tuple[dict[str, float], list[float]]:
    judge = load_local_judge("qwen2.5-coder-1.5b")
    replies: list[Reply] = []
    started = time.perf_counter()
    if gathered:
        groups: dict[int, list] = {}
        for group, messages, kwargs in calls:
            groups.setdefault(group, []).append((messages, kwargs))
        for items in groups.values():
            replies += await asyncio.gather(*(judge.chat(m, **k) for m, k in items))
    else:
        for _, messages, kwargs in calls:
            replies.append(await judge.chat(messages, **kwargs))
    seconds = time.perf_counter() - started
    pool = judge.pool
    figures = {
        "seconds": seconds,
        "prompt": sum(r.usage.prompt_tokens for r in replies),
        "computed": sum(r.usage.prompt_tokens - r.usage.cached_prompt_tokens for r in replies),
        "decoded": pool.decoded_tokens,
        "decodes": pool.decodes,
    }
    await judge.aclose()
    return figures, [p_yes(r) for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=6)
    parser.add_argument("--n", type=int, default=10, help="held-out activating and silent examples (default: 10)")
    parser.add_argument("--prefix-tokens", type=int, default=None, help="worked examples (default: the judge's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-tokens", type=int, default=100_000)
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    calls = asyncio.run(record(args))
    print(f"{len(calls)} judge calls of detection and fuzzing (label and control) on {args.latents} latents")
    results: dict[str, list[dict[str, float]]] = {"one at a time": [], "gathered": []}
    answers: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for way in results:
            figures, p = asyncio.run(replay(calls, gathered=way == "gathered"))
            results[way].append(figures)
            answers[way] = p
            print(f"  {way}: {figures['seconds']:.1f} s, {figures['computed']} computed", flush=True)
    print("\nway             seconds         prompt   computed  decodes  computed tok/s")
    for way, runs in results.items():
        secs = [r["seconds"] for r in runs]
        rate = [r["computed"] / r["seconds"] for r in runs]
        se = statistics.stdev(secs) / math.sqrt(len(secs)) if len(secs) > 1 else math.nan
        rse = statistics.stdev(rate) / math.sqrt(len(rate)) if len(rate) > 1 else math.nan
        last = runs[-1]
        print(
            f"{way:<14} {statistics.mean(secs):7.1f} ± {se:4.1f} {last['prompt']:>10} {last['computed']:>10} "
            f"{last['decodes']:>8} {statistics.mean(rate):9.1f} ± {rse:.1f}"
        )
    a, b = answers["one at a time"], answers["gathered"]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    flips = sum((x > 0.5) != (y > 0.5) for x, y in zip(a, b, strict=True))
    print(
        f"\nP(Yes), gathered vs one at a time: mean |difference| {statistics.mean(diffs):.4f}, "
        f"max {max(diffs):.4f}, answers on the other side of 0.5: {flips} of {len(a)}"
    )


if __name__ == "__main__":
    main()
