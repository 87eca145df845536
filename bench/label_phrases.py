"""Are the names-style labels' phrases right for the tokens they list? The phrase check, before and after.

    python bench/label_phrases.py [--skip 20] [--latents 25]             # make the labels, print them
    python bench/label_phrases.py --verdicts bench/label_phrases_verdicts.json   # and the share accepted

On the default model, dictionary, corpus and judge, takes the eligible latents after the first
`--skip` (the first 20 are label_quality.py's: these are others, still chosen by index, not by
hand), explains each with the default explainer (names style, the phrase check on) and prints, per
latent, the label the check was given (phrase and tokens), the label it left, the tokens and each
one's P(Yes). They go to `--work`/label_phrases.json.

A careful reader's verdicts on those labels are data beside this script (label_phrases_verdicts.json:
per latent, the label before and after, accept or reject for each, and why; a label is accepted when
its phrase truly describes the tokens it lists, and a token list alone is accepted when it is what
the latent's top tokens are). Given that file, the script prints the share accepted before and after
the check, over the latents whose labels match the file's (a label that changed since is named, not
counted: the verdict was about another text). The file holds verdicts for two slices: `--skip 20
--latents 25` (the check's prompt and thresholds were chosen with token/kind pairs from its first
labels) and `--skip 45 --latents 20` (labelled after they were fixed: the out-of-sample test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from _default_run import default_run

from autointerp.explainers import ExplanationFailed, explain, names_label
from autointerp.llm.judges import make_judge
from autointerp.sampling import Sampler, token_decoder
from autointerp.stages.subject_loading import load_tokenizer

WORK = "/tmp/autointerp-bench-labels"


async def make_labels(args: argparse.Namespace) -> list[dict]:
    config, cache, latents = default_run(
        args.work, judge=args.judge, n_tokens=args.n_tokens, n_held_out=20, n_latents=args.skip + args.latents
    )
    config.response_cache = not args.no_cache
    latents = latents[args.skip :]
    sampler = Sampler(cache, token_decoder(load_tokenizer(config, cache.meta)), config.sampling)
    judge = make_judge(args.judge, config)
    print(f"{len(latents)} latents {latents}; judge {judge.model}")
    rows = []
    for i in latents:
        try:
            label = await explain(sampler.record(i), judge, config.explain)
        except ExplanationFailed as e:
            print(f"  {i:5d}  no label: {e}", file=sys.stderr)
            continue
        check = label.phrase_check
        row = {"latent": i, "label_before": label.text, "label_after": label.text, "tokens": [], "p_yes": []}
        if check is not None:
            row |= {
                "label_before": names_label(check["phrase"], check["tokens"]),
                "tokens": check["tokens"],
                "p_yes": check["p_yes"],
            }
        rows.append(row)
        print(f"  {i:5d}  {row['label_before']!r} -> {row['label_after']!r}  P(Yes) {row['p_yes']}", flush=True)
    await judge.aclose()
    out = Path(args.work) / "label_phrases.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"labels: {out}")
    return rows


def accepted_shares(rows: list[dict], verdicts: list[dict]) -> None:
    by_latent = {v["latent"]: v for v in verdicts}
    counted = {"before": [0, 0], "after": [0, 0]}
    for row in rows:
        v = by_latent.get(row["latent"])
        if v is None:
            print(f"  latent {row['latent']}: no verdict")
            continue
        for side in ("before", "after"):
            if v[f"label_{side}"] != row[f"label_{side}"]:
                print(f"  latent {row['latent']}: the label {side} changed since the verdict: {row[f'label_{side}']!r}")
                continue
            counted[side][0] += v[f"verdict_{side}"] == "accept"
            counted[side][1] += 1
    for side, (ok, n) in counted.items():
        print(f"accepted {side} the check: {ok}/{n}" + (f" = {ok / n:.0%}" if n else ""))
    asked = {row["latent"] for row in rows}
    first = [v["first_design"]["verdict_after"] for v in verdicts if "first_design" in v and v["latent"] in asked]
    if first:  # as recorded: that check's prompt and thresholds are no longer the code's
        ok = first.count("accept")
        print(f"accepted after the first design of the check (as recorded): {ok}/{len(first)} = {ok / len(first):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, default=20, help="eligible latents to pass over (default: 20)")
    parser.add_argument("--latents", type=int, default=25, help="latents to label after them (default: 25)")
    parser.add_argument("--verdicts", help="a reader's verdicts (JSON list): print the share accepted")
    parser.add_argument("--judge", default="qwen2.5-coder-1.5b")
    parser.add_argument("--n-tokens", type=int, default=100_000)
    parser.add_argument("--no-cache", action="store_true", help="bypass the judge's response cache")
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args()
    rows = asyncio.run(make_labels(args))
    if args.verdicts:
        accepted_shares(rows, json.loads(Path(args.verdicts).read_text()))


if __name__ == "__main__":
    main()
