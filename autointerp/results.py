"""The results of a run: append-only JSONL logs, and the Parquet tables materialised from them.

Each finished unit of work (a latent's explanation, a latent's score by one scorer together with
every judgment behind it) is one JSON line, written with a single `write` and fsynced. A crash can
only leave a torn last line, which readers ignore; a resumed run skips what the logs already hold,
so no finished work is lost or duplicated. `results.parquet` (one row per latent) and
`judgments.parquet` (one row per judged example) are rebuilt from the logs, atomically.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp.records import Usage

EXPLANATIONS = "explanations.jsonl"
SCORES = "scores.jsonl"
RESULTS = "results.parquet"
JUDGMENTS = "judgments.parquet"

_lock = threading.Lock()


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    line = json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete rows only: a torn line (from a crash mid-write) is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)


def latest(rows: Iterator[dict[str, Any]], *key: str) -> dict[tuple, dict[str, Any]]:
    """The last row for each key (a retried unit's newest outcome wins)."""
    out: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in key)] = row
    return out


class RunFiles:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.explanations = self.folder / EXPLANATIONS
        self.scores = self.folder / SCORES
        self.results = self.folder / RESULTS
        self.judgments = self.folder / JUDGMENTS
        self.config = self.folder / "config.json"
        self.cache = self.folder / "cache"

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.explanations)
        repair_jsonl(self.scores)

    def explanations_by_latent(self) -> dict[int, dict[str, Any]]:
        return {k[0]: v for k, v in latest(read_jsonl(self.explanations), "latent").items()}

    def scores_by_latent(self) -> dict[tuple[int, str], dict[str, Any]]:
        return latest(read_jsonl(self.scores), "latent", "scorer")  # type: ignore[return-value]


def usage_by_model(files: RunFiles) -> dict[str, Usage]:
    """Judge calls and tokens spent in this folder, per model (explainer and scorers together)."""
    from autointerp.scorers import SCORERS

    totals: dict[str, Usage] = {}
    rows = [(r, r.get("explainer_model")) for r in read_jsonl(files.explanations)]
    # a scorer that asks no LLM (embedding) records its model as judge_model but spends no tokens
    rows += [
        (r, r.get("judge_model"))
        for r in read_jsonl(files.scores)
        if getattr(SCORERS.get(r.get("scorer", "")), "needs_judge", True)
    ]
    for row, model in rows:
        if model and row.get("usage"):
            totals.setdefault(model, Usage()).add(Usage(**row["usage"]))
    return totals


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _metric_columns(scorer: str, scores: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    """The scorer's declared metrics, then any other metric its rows hold (a newer version's, say)."""
    from autointerp.scorers import scorer_metrics

    names = list(scorer_metrics(scorer))
    for (_, name), row in scores.items():
        if name == scorer:
            names += [m for m in (row.get("metrics") or {}) if m not in names]
    return names


def materialize(files: RunFiles, provenance: dict[str, Any], scorers: list[str]) -> pd.DataFrame:
    """Rebuild results.parquet and judgments.parquet from the logs; returns the results table."""
    explanations = files.explanations_by_latent()
    scores = files.scores_by_latent()
    latents = sorted(set(explanations) | {k[0] for k in scores})
    metric_columns = {name: _metric_columns(name, scores) for name in scorers}
    rows = []
    judgment_rows = []
    for latent in latents:
        e = explanations.get(latent, {})
        row: dict[str, Any] = {
            **provenance,
            "hookpoint": e.get("hookpoint", provenance.get("hookpoint")),
            "latent": latent,
            "frequency": e.get("frequency"),
            "max_activation": e.get("max_activation"),
            "fire_windows": e.get("fire_windows"),
            "explanation": e.get("explanation"),
            "explainer_model": e.get("explainer_model"),
            "status": e.get("status", "missing"),
            "error": e.get("error", ""),
            "explainer_prompt_tokens": (e.get("usage") or {}).get("prompt_tokens"),
            "explainer_completion_tokens": (e.get("usage") or {}).get("completion_tokens"),
        }
        for scorer in scorers:
            s = scores.get((latent, scorer))
            if s is not None and e.get("status") == "ok" and s.get("explanation") != e.get("explanation"):
                s = None  # scored for an explanation that has since been replaced: superseded
            metrics = (s or {}).get("metrics") or {}
            for m in metric_columns[scorer]:
                row[f"{scorer}_{m}"] = metrics.get(m)
            row[f"{scorer}_n"] = (s or {}).get("n_examples")
            row[f"{scorer}_n_failed"] = (s or {}).get("n_failed")
            row[f"{scorer}_judge_model"] = (s or {}).get("judge_model")
            row[f"{scorer}_prompt_tokens"] = ((s or {}).get("usage") or {}).get("prompt_tokens")
            row[f"{scorer}_completion_tokens"] = ((s or {}).get("usage") or {}).get("completion_tokens")
            if s and s.get("status") != "ok" and row["status"] == "ok":
                row["status"] = f"{scorer} {s.get('status')}"
                row["error"] = s.get("error", "")
            for j in (s or {}).get("judgments") or []:
                judgment_rows.append({"hookpoint": row["hookpoint"], "latent": latent, "scorer": scorer, **j})
        rows.append(row)
    df = pd.DataFrame(rows)
    int_cols = ["latent", "fire_windows"] + [f"{s}_{c}" for s in scorers for c in ("n", "n_failed")]
    for c in int_cols:
        if c in df:
            df[c] = df[c].astype("Int64")
    _write_parquet(df, files.results)
    jdf = pd.DataFrame(
        judgment_rows,
        columns=[
            "hookpoint",
            "latent",
            "scorer",
            "window",
            "activating",
            "prediction",
            "probability",
            "max_activation",
            "quantile",
            "answer",
            "error",
            "text",
            "value",
        ],
    )
    _write_parquet(jdf, files.judgments)
    return df
