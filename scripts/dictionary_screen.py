#!/usr/bin/env python
"""Judge-free screen of a dictionary: how well can its latents, as a run picks them, be told by tokens?

    autointerp cache --out /tmp/cand --dictionary PATH        # the run's cache on the default corpus
    python scripts/dictionary_screen.py /tmp/cand [/tmp/other ...] [--latents 60]

A 1.5B judge mostly matches tokens, so what it can score well are latents whose activations, weak
ones included, are made by a recognisable token or small family of tokens. This measures exactly
that, in seconds instead of hours of judge time, to rank candidate dictionaries before confirming
the best with the real judge:

1. Latents are taken as `autointerp run` takes them (`pipeline.select_latents`: the first latents by
   index that fire in >= min_examples windows) and records built with the project's own `Sampler`
   and default `SamplingSettings`, so splits, quantiles and negatives are the ones a run would use.
2. Each latent gets a "tokens label": the `--label-tokens` most frequent tokens marked in its
   *training* examples (above 0.3 x the example's maximum, as the explainer marks them), compared
   after stripping spaces and case, as a reader of the label would.
3. On its *held-out* examples (test positives across activation quantiles vs. the test negatives),
   a window is predicted active when it contains one of those tokens. Reported per latent: balanced
   accuracy, AUROC of a graded score (the label share of the most frequent label token in the
   window, so a window with the latent's main token ranks above one with a rare token), and recall
   per activation quantile; then means with standard errors over latents.

Prints one table row per cache folder and, with --json, writes everything (per latent too).
`--write-labels FILE` writes the tokens labels in the format of our `explanations.jsonl`, and
`--write-control FILE` the same labels given to other latents (a seeded derangement), so the real
judge can score both with `autointerp score --out RUN --explanations FILE` on copies of the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autointerp.cache.store import ActivationCache  # noqa: E402
from autointerp.config import RunConfig, load_config  # noqa: E402
from autointerp.pipeline import select_latents  # noqa: E402
from autointerp.prompting import clean_token, marks_above  # noqa: E402
from autointerp.records import Example, LatentRecord  # noqa: E402
from autointerp.results import RunFiles  # noqa: E402
from autointerp.sampling import NotEnoughExamples, Sampler, SamplingSettings, token_decoder  # noqa: E402
from autointerp.scorers.metrics import auroc  # noqa: E402


def norm(token: str) -> str:
    return clean_token(token).strip().lower() or repr(token)


def tokens_label(train: list[Example], fraction: float, n: int) -> dict[str, float]:
    """The n most frequent marked tokens of the training examples, with their share of the marks."""
    counts: Counter[str] = Counter()
    for ex in train:
        counts.update(norm(t) for t, m in zip(ex.str_tokens, marks_above(ex, fraction), strict=True) if m)
    total = sum(counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return {tok: c / total for tok, c in ranked}


def window_score(ex: Example, label: dict[str, float]) -> float:
    """Share (in the label) of the most frequent label token present in the window; 0 if none."""
    return max((label.get(norm(t), 0.0) for t in ex.str_tokens), default=0.0)


def latent_proxy(record: LatentRecord, fraction: float, n_tokens: int, n_quantiles: int) -> dict:
    label = tokens_label(record.train, fraction, n_tokens)
    pos = [window_score(e, label) for e in record.test]
    neg = [window_score(e, label) for e in record.negatives]
    tpr = float(np.mean([p > 0 for p in pos]))
    fpr = float(np.mean([s > 0 for s in neg])) if neg else 0.0
    recall_q = [float("nan")] * n_quantiles
    for q in range(n_quantiles):
        hits = [p > 0 for p, e in zip(pos, record.test, strict=True) if e.quantile == q]
        if hits:
            recall_q[q] = float(np.mean(hits))
    labels = [1] * len(pos) + [0] * len(neg)
    return {
        "latent": record.latent.index,
        "label": list(label),
        "label_share": float(sum(label.values())),
        "balanced_accuracy": 0.5 * (tpr + 1 - fpr),
        "auroc": float(auroc(labels, pos + neg)),
        "tpr": tpr,
        "fpr": fpr,
        "recall_by_quantile": recall_q,
        "n_test": len(pos),
        "n_negatives": len(neg),
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def screen(folder: Path, n_latents: int, fraction: float, n_tokens: int) -> dict:
    files = RunFiles(folder)
    config, resolved = load_config(files.config) if files.config.exists() else (RunConfig(), {})
    cache = ActivationCache(files.cache)
    settings = SamplingSettings(**{**vars(config.sampling)})
    from autointerp.subjects.model import load_tokenizer

    sampler = Sampler(cache, token_decoder(load_tokenizer(None)), settings)
    config.max_latents = None
    config.latents = None
    eligible, n_rare = select_latents(cache, config)
    rows = []
    for latent in eligible:
        if len(rows) >= n_latents:
            break
        try:
            record = sampler.record(latent)
        except NotEnoughExamples:
            continue
        rows.append(latent_proxy(record, fraction, n_tokens, settings.n_quantiles))
    q = settings.n_quantiles
    per_q = [mean_se([r["recall_by_quantile"][i] for r in rows]) for i in range(q)]
    summary = {
        "folder": str(folder),
        "dictionary": config.dictionary,
        "hookpoint": cache.meta.hookpoint,
        "num_latents": cache.num_latents,
        "eligible": len(eligible),
        "n_rare": n_rare,
        "latents_screened": len(rows),
        "auroc": mean_se([r["auroc"] for r in rows]),
        "balanced_accuracy": mean_se([r["balanced_accuracy"] for r in rows]),
        "tpr": mean_se([r["tpr"] for r in rows]),
        "fpr": mean_se([r["fpr"] for r in rows]),
        "recall_bottom3": mean_se([float(np.nanmean(r["recall_by_quantile"][:3])) for r in rows]),
        "recall_top3": mean_se([float(np.nanmean(r["recall_by_quantile"][-3:])) for r in rows]),
        "recall_by_quantile": per_q,
        "latents": rows,
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="run folders holding a finished cache (autointerp cache)")
    p.add_argument("--latents", type=int, default=60, help="latents per folder, the first eligible by index")
    p.add_argument("--label-tokens", type=int, default=5, help="tokens in each latent's tokens label")
    p.add_argument("--mark-fraction", type=float, default=0.3, help="marked = above this fraction of the max")
    p.add_argument("--json", type=Path, default=None, help="write every figure (per latent too) here")
    p.add_argument("--show", type=int, default=0, help="print the labels of the first N latents of each folder")
    p.add_argument(
        "--write-labels", type=Path, default=None, help="first folder's tokens labels (explanations.jsonl format)"
    )
    p.add_argument("--write-control", type=Path, default=None, help="first folder's labels deranged across latents")
    args = p.parse_args(argv)

    results = []
    head = f"{'folder':40s} {'hook':9s} {'latents':>7s} {'elig':>5s} {'n':>3s}  {'AUROC':>13s}  {'bal.acc':>13s}"
    head += f"  {'recall q0-2':>13s}  {'recall q7-9':>13s}  {'FPR':>5s}"
    print(head)
    for folder in args.folders:
        s = screen(folder, args.latents, args.mark_fraction, args.label_tokens)
        results.append(s)

        def f(key: str, s: dict = s) -> str:
            return f"{s[key][0]:.3f} ± {s[key][1]:.3f}"

        print(
            f"{str(folder)[-40:]:40s} {s['hookpoint']:9s} {s['num_latents']:7d} {s['eligible']:5d} "
            f"{s['latents_screened']:3d}  {f('auroc')}  {f('balanced_accuracy')}  {f('recall_bottom3')}  "
            f"{f('recall_top3')}  {s['fpr'][0]:.3f}",
            flush=True,
        )
        for r in s["latents"][: args.show]:
            print(f"    latent {r['latent']:5d} AUROC {r['auroc']:.2f} label {r['label']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_labels or args.write_control:
        s = results[0]
        rows = [r for r in s["latents"] if r["label"]]
        text = {r["latent"]: "the tokens " + ", ".join(f'"{t}"' for t in r["label"]) for r in rows}
        latents = [r["latent"] for r in rows]
        if args.write_labels:
            write_labels(args.write_labels, s["hookpoint"], {lat: (text[lat], lat) for lat in latents})
        if args.write_control:
            order = [latents[i] for i in np.random.default_rng(0).permutation(len(latents))]
            donors = {lat: order[(i + 1) % len(order)] for i, lat in enumerate(order)}
            write_labels(args.write_control, s["hookpoint"], {lat: (text[d], d) for lat, d in donors.items()})


def write_labels(path: Path, hookpoint: str, labels: dict[int, tuple[str, int]]) -> None:
    with open(path, "w") as f:
        for latent, (text, donor) in sorted(labels.items()):
            row = {"latent": latent, "hookpoint": hookpoint, "status": "ok", "explanation": text}
            row["explainer_model"] = "tokens" if donor == latent else f"tokens-of-latent-{donor}"
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
