"""What intervention scoring costs per latent on the subject model: seconds, forward passes, KL reached.

    python bench/intervention_cost.py [--run DIR] [--latents 5] [--tokens 16384] [--device cpu]
                                      [--dtype bfloat16] [--judge smollm2]

Uses the run folder's activation cache (or builds one of --tokens tokens of the default corpus in a
temporary folder) with the embedded SmolLM2-135M and the shipped SAE, then for the first --latents
eligible latents tunes the steering strength to the KL target and generates the clean and steered
continuations, printing per latent the seconds, the batched forward passes, the strength and the
KL reached, and one prompt with both continuations. With --judge (one that returns prompt
logprobs), it also times the judge side of the surprisal difference for a fixed explanation.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run folder with a finished cache (default: build one)")
    parser.add_argument("--latents", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--judge", help="also time the judge side with this judge (needs prompt logprobs)")
    args = parser.parse_args()

    from autointerp.cache.store import ActivationCache
    from autointerp.config import RunConfig
    from autointerp.llm.judges import make_judge
    from autointerp.records import Explanation
    from autointerp.results import RunFiles
    from autointerp.sampling import Sampler, token_decoder
    from autointerp.scorers.intervention import InterventionRunner, InterventionScorer, InterventionSettings
    from autointerp.stages.cache_stage import cache_stage
    from autointerp.stages.open_run import steering_subject

    config = RunConfig(n_tokens=args.tokens, device=args.device, dtype=args.dtype)
    config.scoring["intervention"] = {"n_prompts": args.prompts}
    settings = InterventionSettings.of(config)
    files = RunFiles(args.run or Path(tempfile.mkdtemp(prefix="intervention-bench-")))
    files.prepare()
    if args.run is None:
        start = time.perf_counter()
        cache_stage(files, config, progress=False)
        print(f"cache of {args.tokens:,} tokens built in {time.perf_counter() - start:.1f}s")
    cache = ActivationCache(files.cache)
    start = time.perf_counter()
    subject = steering_subject(config)
    print(f"subject model and dictionary loaded in {time.perf_counter() - start:.1f}s on {args.device}")
    runner = InterventionRunner(subject, cache, settings)
    sampler = Sampler(cache, token_decoder(subject.tokenizer), config.sampling)
    eligible = [i for i in range(cache.num_latents) if cache.state.fire_windows[i] >= config.sampling.min_examples]
    latents = eligible[: args.latents]

    judge = make_judge(args.judge, config) if args.judge else None
    scorer = InterventionScorer(runner) if judge is not None else None
    if scorer is not None:
        scorer.check_judge(judge)
    seconds = []
    for latent in latents:
        record = sampler.record(latent)
        start = time.perf_counter()
        iv = runner.run_sync(record)
        seconds.append(time.perf_counter() - start)
        c = iv.continuations[0]
        print(
            f"latent {latent}: {seconds[-1]:.2f}s, {iv.forward_passes} batched forward passes of "
            f"{len(iv.continuations)} prompts, strength {iv.strength:.3g} (max activation "
            f"{record.stats.max_activation:.3g}), KL {iv.kl:.3f}{'' if iv.kl_reached else ' (target not reached)'}, "
            f"{iv.changed:.0%} of continuations changed"
        )
        print(f"    prompt  {c.prompt!r}\n    clean   {c.clean!r}\n    steered {c.steered!r}")
        if scorer is not None:
            start = time.perf_counter()
            score = asyncio.run(scorer(record, Explanation(record.latent, "words about time", "bench"), judge))
            print(f"    judge side: {time.perf_counter() - start:.2f}s for {score.usage.calls} texts scored")
    print(
        f"mean {sum(seconds) / len(seconds):.2f}s per latent on the subject model "
        f"({settings.n_prompts} prompts, {settings.new_tokens} new tokens)"
    )


if __name__ == "__main__":
    main()
