"""Judge tokens per latent, one example per call against several per call, at what validity.

    python bench/judge_cost.py [--judge qwen2.5-coder-1.5b | openai:MODEL --judge-url URL | scripted]
                               [--latents 3] [--planted 2]
                               [--n 10] [--variants logprobs,slots5,slots10]
                               [--variants logprobs+last,logprobs+first,logprobs+first+prefix1024]
                               [--variants slots5,slots5+grammar]

On the same latents and the same labels, scores detection and fuzzing with each variant of asking
the judge: `logprobs` (one example per call, P(Yes) from the one generated token) and `slotsN`
(N numbered examples per call, one "k: Yes/No" line each, P(Yes) at each line), each with `+`
options: `+last` / `+first` (the one-per-call layout: question after the excerpt, or everything a
latent's calls share before it), `+prefixT` (worked examples lengthen the run-wide shared prefix to
about T tokens), `+grammar` (slots replies constrained by a grammar). Latents:

- `--latents` default latents (the first eligible ones of the embedded default model, SAE and corpus),
  each labelled with its no-LLM tokens label, and scored again with another latent's label (the
  shuffled control): a variant that keeps validity keeps the gap between the two;
- `--planted` planted latents (tests/helpers/planted.py: they fire on month names), scored with the right
  label and a wrong one.

Prints, per variant, what one latent cost per scorer (calls, prompt tokens, the part a prefix cache
held, the part computed, completion tokens; the judge's own counts), and the mean AUROC with its
standard error over latents, paired against one-per-call. `--judge scripted` answers with the
planted oracle (no model: token accounting only, 4 characters a token, planted latents only).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import oracle, planted_record, slots_oracle  # noqa: E402

from autointerp.records import Explanation, LatentRecord, Usage  # noqa: E402
from autointerp.scorers import ClassifierSettings, DetectionScorer, FuzzingScorer  # noqa: E402

RIGHT = "names of calendar months, such as March or October"
WRONG = "names of animals, such as cat or dog"
WORK = "/tmp/autointerp-bench-labels"


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.3f} ± {se:.3f} (n={len(values)})"


def settings(variant: str) -> ClassifierSettings:
    """`logprobs` or `slotsN`, then `+` options: `first` / `last` (the one-per-call prompt layout),
    `prefixT` (worked examples up to T shared-prefix tokens), `grammar` (slots constrained by a grammar)."""
    base, *options = variant.split("+")
    if base == "logprobs":
        out = ClassifierSettings(mode="logprobs")
    elif base.startswith("slots"):
        out = ClassifierSettings(mode="slots", batch_size=int(base[len("slots") :]))
    else:
        raise SystemExit(f"unknown variant {variant!r}: logprobs or slotsN, then +first, +last, +prefixT, +grammar")
    for option in options:
        if option in ("first", "last"):
            out = replace(out, layout=f"question_{option}")
        elif option.startswith("prefix"):
            out = replace(out, prefix_tokens=int(option[len("prefix") :]))
        elif option == "grammar":
            out = replace(out, slots_grammar=True)
        else:
            raise SystemExit(f"unknown option {option!r} of variant {variant!r}")
    return out


def scripted_judge():
    from autointerp.llm.scripted import ScriptedJudge

    def answer(messages):
        return slots_oracle(messages) if "Excerpt 1:" in messages[-1]["content"] else oracle(messages)

    return ScriptedJudge(answer, prefix_cache=True)


def default_latents(args: argparse.Namespace) -> list[tuple[str, LatentRecord, str, str]]:
    """(name, record, label, control label) of the first default latents."""
    from _default_run import default_run

    from autointerp.controls import donor_map
    from autointerp.explainers import tokens_label
    from autointerp.sampling import Sampler, token_decoder
    from autointerp.stages.subject_loading import load_tokenizer

    config, cache, latents = default_run(
        args.work, judge="qwen2.5-coder-1.5b", n_tokens=100_000, n_held_out=args.n, n_latents=args.latents
    )
    sampler = Sampler(cache, token_decoder(load_tokenizer(config, cache.meta)), config.sampling)
    records = [sampler.record(i) for i in latents]
    labels = {r.latent: tokens_label(r, config.explain) for r in records}
    donors = donor_map(list(labels), config.sampling.seed)
    return [(f"default {r.latent.index}", r, labels[r.latent], labels[donors[r.latent]]) for r in records]


async def main_async(args: argparse.Namespace) -> None:
    variants = args.variants.split(",")
    cases = [
        (f"planted {s}", planted_record(n_test=args.n, n_neg=args.n, seed=s), RIGHT, WRONG) for s in range(args.planted)
    ]
    if args.judge == "scripted":
        judge = scripted_judge()
    else:
        from autointerp.config import RunConfig
        from autointerp.llm.judges import make_judge

        cases = default_latents(args) + cases
        # any judge a run takes (a local GGUF, openai:MODEL with --judge-url, vllm:MODEL); no response
        # cache, so every call is counted
        config = RunConfig(judge=args.judge, judge_url=args.judge_url, response_cache=False)
        judge = make_judge(args.judge, config)
    print(f"judge {judge.model}; {len(cases)} latents, {args.n}+{args.n} held-out examples; variants {variants}")
    # usage[(variant, scorer)] per latent; auroc[(variant, scorer, arm)][case]
    usage: dict[tuple[str, str], list[Usage]] = {}
    auroc: dict[tuple[str, str, str], dict[str, float]] = {}
    failed: dict[tuple[str, str], int] = {}
    reasks: dict[tuple[str, str], int] = {}  # calls beyond one per question (answers asked again)
    seconds = dict.fromkeys(variants, 0.0)
    for name, record, label, control in cases:  # latent by latent, so a cut-short run is still paired
        for variant in variants:
            start = time.perf_counter()
            line = [f"  {name:>12} {variant:>9}"]
            for scorer in (DetectionScorer(settings(variant)), FuzzingScorer(settings(variant))):
                for arm, text in (("label", label), ("control", control)):
                    score = await scorer(record, Explanation(record.latent, text, "bench"), judge)
                    if arm == "label":  # the cost of one latent is its label's scoring (the control doubles it)
                        usage.setdefault((variant, scorer.name), []).append(score.usage)
                        u = score.usage
                        line.append(f"{scorer.name[:3]} {u.calls}c {u.prompt_tokens}p {u.cached_prompt_tokens}k")
                    failed[(variant, scorer.name)] = failed.get((variant, scorer.name), 0) + score.n_failed
                    per_call = scorer.settings.batch_size if scorer.settings.mode == "slots" else 1
                    asked_again = score.usage.calls - math.ceil(score.n_examples / per_call)
                    reasks[(variant, scorer.name)] = reasks.get((variant, scorer.name), 0) + asked_again
                    value = score.metrics.get("auroc")
                    if value is not None and not math.isnan(value):
                        auroc.setdefault((variant, scorer.name, arm), {})[name] = value
                    line.append(f"{scorer.name[:3]}/{arm[:4]} {'-' if value is None else f'{value:.2f}'}")
                    line.append(f"({score.n_failed} failed)" if score.n_failed else "")
            seconds[variant] += time.perf_counter() - start
            print(" ".join(x for x in line if x), flush=True)
    await judge.aclose()

    print("\nper latent and scorer, mean over latents (the label's scoring; the control costs the same again):")
    print(f"  {'variant':>9} {'scorer':>9} {'calls':>6} {'prompt':>7} {'cached':>7} {'computed':>8} {'compl.':>6}")
    for variant in variants:
        both = Usage()
        for scorer in ("detection", "fuzzing"):
            spent = usage.get((variant, scorer), [])
            total = Usage()
            for u in spent:
                total.add(u)
            k = max(1, len(spent))
            both.add(total)
            print(
                f"  {variant:>9} {scorer:>9} {total.calls / k:6.1f} {total.prompt_tokens / k:7.0f} "
                f"{total.cached_prompt_tokens / k:7.0f} {total.computed_prompt_tokens / k:8.0f} "
                f"{total.completion_tokens / k:6.0f}"
            )
        k = max(1, len(usage.get((variant, "detection"), [])))
        print(
            f"  {variant:>9} {'both':>9} {both.calls / k:6.1f} {both.prompt_tokens / k:7.0f} "
            f"{both.cached_prompt_tokens / k:7.0f} {both.computed_prompt_tokens / k:8.0f} "
            f"{both.completion_tokens / k:6.0f}   ({seconds[variant]:.0f} s for all latents, both arms)"
        )
    print(
        "\nAUROC, mean ± standard error over latents (label / control or wrong label), paired with the first variant:"
    )
    groups = {
        "default": [c[0] for c in cases if c[0].startswith("default")],
        "planted": [c[0] for c in cases if c[0].startswith("planted")],
    }
    for group, names in groups.items():
        if not names:
            continue
        print(f"  {group} latents:")
        for scorer in ("detection", "fuzzing"):
            for variant in variants:
                lab = auroc.get((variant, scorer, "label"), {})
                con = auroc.get((variant, scorer, "control"), {})
                base = auroc.get((variants[0], scorer, "label"), {})
                gap = [lab[n] - con[n] for n in names if n in lab and n in con]
                base_con = auroc.get((variants[0], scorer, "control"), {})
                paired = [lab[n] - base[n] for n in names if n in lab and n in base]
                both = [n for n in names if n in lab and n in con and n in base and n in base_con]
                paired_gap = [(lab[n] - con[n]) - (base[n] - base_con[n]) for n in both]
                print(
                    f"    {scorer:>9} {variant:>9}: label {mean_se([lab[n] for n in names if n in lab])}, "
                    f"control {mean_se([con[n] for n in names if n in con])}, gap {mean_se(gap)}"
                    + (
                        f"; minus {variants[0]}: label {mean_se(paired)}, gap {mean_se(paired_gap)}"
                        if variant != variants[0]
                        else ""
                    )
                    + f"; {reasks.get((variant, scorer), 0)} calls re-asked, "
                    + f"{failed.get((variant, scorer), 0)} answers unusable"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--judge", default="qwen2.5-coder-1.5b", help="a judge as `run --judge` takes it, or 'scripted'"
    )
    parser.add_argument("--judge-url", default=None, help="base URL of an openai: judge's server")
    parser.add_argument("--latents", type=int, default=3, help="default latents (the first eligible ones)")
    parser.add_argument("--planted", type=int, default=2, help="planted latents (seeds 0, 1, ...)")
    parser.add_argument("--n", type=int, default=10, help="held-out activating and silent examples per latent")
    parser.add_argument("--variants", default="logprobs,slots5,slots10", help="the first is the one compared against")
    parser.add_argument("--work", default=WORK, help="work folder of the default run's activation cache")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
