"""How well a judge separates the right explanation of a planted latent from a wrong one.

    python bench/judge_planted.py [--judge qwen2.5-coder-1.5b] [--seeds 1,2,3] [--n 10]
                                  [--scorers detection,fuzzing,simulation,surprisal]

The planted latent fires on month names (tests/helpers/planted.py); its silent examples mention animals.
For each scorer, prints its two headline metrics (balanced accuracy and AUROC for detection and
fuzzing; correlation and per-example correlation for simulation; AUROC and the activating examples'
loss drop for surprisal) for the right explanation ("names of calendar months") and a wrong one
("names of animals"), averaged over seeds. Run it before and after any
change to a judge-facing prompt: the gap between right and wrong is the figure to keep.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import planted_record  # noqa: E402

from autointerp.config import RunConfig  # noqa: E402
from autointerp.llm.local import load_local_judge  # noqa: E402
from autointerp.records import Explanation  # noqa: E402
from autointerp.scorers import ScorerContext, build_scorers, scorer_names  # noqa: E402

RIGHT = "names of calendar months, such as March or October"
WRONG = "names of animals, such as cat or dog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", default="qwen2.5-coder-1.5b")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--n", type=int, default=10, help="activating and silent examples per record")
    parser.add_argument("--scorers", default="detection,fuzzing", help=f"comma-separated, of {scorer_names()}")
    args = parser.parse_args()
    judge = load_local_judge(args.judge, n_ctx=2048)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"judge {judge.model}, {len(seeds)} planted records of {args.n}+{args.n} examples")
    for scorer in build_scorers(args.scorers.split(","), RunConfig(), ScorerContext()):
        for label, text in (("right", RIGHT), ("wrong", WRONG)):
            values: dict[str, list[float]] = {m: [] for m in scorer.metrics[:2]}
            failed, start = 0, time.perf_counter()
            for seed in seeds:
                record = planted_record(n_test=args.n, n_neg=args.n, seed=seed)
                score = asyncio.run(scorer(record, Explanation(record.latent, text, "bench"), judge))
                for m, got in values.items():
                    if score.metrics[m] is not None:
                        got.append(score.metrics[m])
                failed += score.n_failed
            shown = ", ".join(f"{m} {statistics.mean(v):.3f}" if v else f"{m} undefined" for m, v in values.items())
            print(
                f"  {scorer.name:10s} {label}: {shown}, unreadable answers {failed}, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    asyncio.run(judge.aclose())


if __name__ == "__main__":
    main()
