"""Do the labels beat chance on the embedded default? Right labels, a zero-cost baseline and a control.

    python bench/label_quality.py [--latents 20] [--n 20] [--arms default,tokens] [--scorers detection,fuzzing]

On the default model, dictionary, corpus and judge, takes the first `--latents` latents a run takes
(the first that fire often enough, by index: no choosing), and scores on each latent's held-out
examples (`--n` activating across all activation quantiles, `--n` silent):

- every arm's labels: `default` (the run's explainer, an LLM), `tokens` (the no-LLM label naming the
  most frequent strongly-activating tokens), or `NAME=FILE` (a JSON {latent: label} made elsewhere);
- the shuffled control: each latent's examples scored with another latent's label of the first arm
  (the run's own seeded derangement), i.e. what a wrong label of the same kind earns there.

Prints one line per latent and, per scorer, each arm's mean AUROC with its standard error over
latents, and the paired differences (arm - control, arm - arm) with theirs: the latents are the
same for every arm, so the paired standard error is the one that says whether a difference is
real. A scorer with no AUROC is read on its headline metric, named beside it in the output:
`intervention` the surprisal difference (nats; the subject model is loaded to steer, as in a run,
and the judge must give prompt logprobs), `intervention_choice` the accuracy of picking the
steered continuation (chance 0.5). A label-free scorer (`--scorers intruder`) rates the latent
once, whatever the arms, beside its own control (a random pick), on its headline metric (the
intruder's accuracy) instead of AUROC.
Labels and scores go to `--work`/label_quality.json; the judge's response cache makes a re-run with
the same labels free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path

from _default_run import default_run

from autointerp.controls import donor_map
from autointerp.explainers import ExplanationFailed, explain, tokens_label
from autointerp.llm.judges import make_judge
from autointerp.records import Explanation, LatentRecord
from autointerp.sampling import Sampler, token_decoder
from autointerp.scorers.base import Scorer
from autointerp.scorers.classify import YesNoScorer
from autointerp.stages.open_run import make_scorers
from autointerp.stages.subject_loading import load_tokenizer

WORK = "/tmp/autointerp-bench-labels"


def mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.mean(values), se


def label_free(scorer: Scorer) -> bool:
    """A scorer that rates the latent, not a label: it says itself what chance is (its own `control`)."""
    return type(scorer).control is not Scorer.control


def metric_of(scorer: Scorer) -> str:
    """AUROC where the scorer gives one; else its headline metric (intervention: the surprisal difference
    in nats, intervention_choice: the accuracy of picking the steered continuation)."""
    return "auroc" if "auroc" in scorer.metrics else scorer.metrics[0]


def fmt(values: list[float]) -> str:
    m, se = mean_se(values)
    return f"{m:.3f} ± {se:.3f} (n={len(values)})"


async def label(arm: str, record: LatentRecord, explainer, config, files: dict[str, dict[str, str]]) -> str | None:
    """The arm's label of this latent, or None when the arm gives it none (a failure, reported)."""
    try:
        if arm == "default":
            return (await explain(record, explainer, config.explain)).text
        if arm == "tokens":
            return tokens_label(record, config.explain)
        return files[arm].get(str(record.latent.index))
    except ExplanationFailed as e:
        print(f"    latent {record.latent.index}: arm {arm} gave no label: {e}", file=sys.stderr)
        return None


async def main_async(args: argparse.Namespace) -> None:
    config, cache, latents = default_run(
        args.work, judge=args.judge, n_tokens=args.n_tokens, n_held_out=args.n, n_latents=args.latents
    )
    config.response_cache = not args.no_cache
    config.scoring["classifier"] = {"layout": args.prompt_layout}
    if args.prefix_tokens is not None:
        config.scoring["classifier"]["prefix_tokens"] = args.prefix_tokens
    files = {}
    arms = []
    for spec in args.arms.split(","):
        name, _, path = spec.partition("=")
        if path:
            files[name] = {str(k): v for k, v in json.loads(Path(path).read_text()).items()}
        arms.append(name)
    sampler = Sampler(cache, token_decoder(load_tokenizer(config, cache.meta)), config.sampling)
    scorers = make_scorers(config, args.scorers.split(","), cache)
    judge = make_judge(args.judge, config)
    for scorer in scorers:  # as a run does: an unfit judge is refused once, not on every latent
        scorer.check_judge(judge)
    explainer = judge if "default" in arms else None
    print(
        f"{len(latents)} latents {latents}; judge {judge.model}; {args.n}+{args.n} held-out examples per scorer; "
        f"prompt layout {args.prompt_layout}, worked examples up to "
        f"{YesNoScorer.settings_from(config).prefix_tokens} tokens"
    )
    started = time.perf_counter()
    records = {i: sampler.record(i) for i in latents}
    labels: dict[str, dict[int, str | None]] = {arm: {} for arm in arms}
    for i in latents:
        for arm in arms:
            labels[arm][i] = await label(arm, records[i], explainer, config, files)
    labelled = [records[i].latent for i in latents if labels[arms[0]][i] is not None]
    donors = donor_map(labelled, config.sampling.seed) if len(labelled) > 1 else {}
    values: dict[tuple[str, str], dict[int, float]] = {}  # (scorer, arm) -> latent -> metric_of(scorer)
    for i in latents:
        record = records[i]
        texts = {arm: labels[arm][i] for arm in arms}
        if record.latent in donors:
            texts["control"] = labels[arms[0]][donors[record.latent].index]
        line = [f"  {i:5d}"]
        for scorer in scorers:
            if label_free(scorer):
                none = Explanation(record.latent, "", model="none")
                for arm, score in (
                    ("latent", await scorer(record, none, judge)),
                    ("control", await scorer.control(record, none, judge)),
                ):
                    value = score.metrics.get(metric_of(scorer))
                    if value is not None:
                        values.setdefault((scorer.name, arm), {})[i] = value
                    line.append(f"{scorer.name[:3]}/{arm[:4]} {'-' if value is None else f'{value:.2f}'}")
                continue
            for arm, text in texts.items():
                if text is None:
                    continue
                score = await scorer(record, Explanation(record.latent, text, model=arm), judge)
                value = score.metrics.get(metric_of(scorer))
                if value is not None:
                    values.setdefault((scorer.name, arm), {})[i] = value
                line.append(f"{scorer.name[:3]}/{arm[:4]} {'-' if value is None else f'{value:.2f}'}")
        print("  ".join(line) + "  | " + " | ".join(f"{a}: {t!r}" for a, t in texts.items())[:400], flush=True)
    await judge.aclose()

    print(f"\nmean over latents ± standard error ({time.perf_counter() - started:.0f} s):")
    for scorer in scorers:
        rated = ["latent"] if label_free(scorer) else arms
        columns = [*rated, "control"]
        print(f"  {scorer.name} ({metric_of(scorer)}):")
        for arm in columns:
            print(f"    {arm:>10}: {fmt(list(values.get((scorer.name, arm), {}).values()))}")
        for a, b in [(arm, "control") for arm in rated] + [(a, b) for n, a in enumerate(rated) for b in rated[n + 1 :]]:
            x, y = values.get((scorer.name, a), {}), values.get((scorer.name, b), {})
            diffs = [x[i] - y[i] for i in x if i in y]
            print(f"    {a} - {b}: {fmt(diffs)} (paired)")
    out = Path(args.work) / "label_quality.json"
    out.write_text(
        json.dumps(
            {
                "latents": latents,
                "labels": {arm: {str(k): v for k, v in d.items()} for arm, d in labels.items()},
                "donors": {str(k.index): v.index for k, v in donors.items()},
                "metric": {scorer.name: metric_of(scorer) for scorer in scorers},
                "scores": {f"{s}/{a}": {str(k): v for k, v in d.items()} for (s, a), d in values.items()},
            },
            indent=1,
        )
    )
    print(f"labels and scores: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latents", type=int, default=20, help="latents, the first eligible ones (default: 20)")
    parser.add_argument("--n", type=int, default=20, help="held-out activating and silent examples (default: 20)")
    parser.add_argument("--arms", default="default,tokens", help="label sources; the first one lends the control")
    parser.add_argument("--scorers", default="detection,fuzzing")
    parser.add_argument("--judge", default="qwen2.5-coder-1.5b")
    parser.add_argument("--n-tokens", type=int, default=100_000)
    parser.add_argument("--no-cache", action="store_true", help="bypass the judge's response cache")
    parser.add_argument(
        "--prefix-tokens",
        type=int,
        default=None,
        help="detection/fuzzing worked examples up to ~T tokens (default: the judge's, 1024 for the embedded one)",
    )
    parser.add_argument("--prompt-layout", default="question_last", choices=["question_last", "question_first"])
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
