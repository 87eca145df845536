"""Reading a run folder for the report: the results table, the judgments, and which columns are scores
(`find_scorers`, results.py: the same reading the summary line and the dataset card make)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp.config import RunConfig, load_config
from autointerp.errors import AutointerpError
from autointerp.results import JUDGMENT_COLUMNS, RunFiles, ScorerColumns, find_scorers

__all__ = ["Agreement", "ReportError", "RunData", "ScorerColumns", "agreement", "find_scorers", "load_run"]


class ReportError(AutointerpError):
    """The folder cannot be reported on; the message says what is missing and what to run."""


@dataclass
class RunData:
    files: RunFiles
    config: RunConfig | None  # None when config.json is gone (the results can still be shown)
    info: dict[str, Any]  # config.json as written: config, resolved, environment
    results: pd.DataFrame
    judgments: pd.DataFrame
    scorers: list[ScorerColumns]

    @property
    def several_hookpoints(self) -> bool:
        """A run of several hookpoints: latents are named by hookpoint and index, pages too."""
        return "hookpoint" in self.results and self.results["hookpoint"].nunique(dropna=True) > 1


def load_run(folder: Path) -> RunData:
    files = RunFiles(Path(folder))
    if not files.folder.is_dir():
        raise ReportError(f"{files.folder} is not a folder: give the run folder that `autointerp run --out` wrote")
    if not files.results.exists():
        raise ReportError(
            f"{files.folder} has no {files.results.name}: nothing to report yet. Run "
            f"`autointerp run --out {files.folder}` (or `explain` and `score`) first"
        )
    results = pd.read_parquet(files.results)
    if results.empty:
        raise ReportError(f"{files.results} holds no latents yet: run `autointerp run --out {files.folder}` first")
    config, info = None, {}
    if files.config.exists():
        import json

        config, _ = load_config(files.config)
        info = json.loads(files.config.read_text())
    if files.judgments.exists():
        judgments = pd.read_parquet(files.judgments)
    else:
        judgments = pd.DataFrame(columns=JUDGMENT_COLUMNS)
    if "control" not in judgments:  # written before controls existed
        judgments["control"] = False
    judgments["control"] = judgments["control"].fillna(False).astype(bool)
    scorers = find_scorers(results, config.scorers if config else [])
    for s in scorers:
        for column in [s.column(m) for m in s.metrics] + [s.control_column(m) for m in s.controls]:
            results[column] = pd.to_numeric(results[column], errors="coerce")
    # the run's hookpoint order (as results.parquet has it), then by latent
    if "hookpoint" in results:
        rank = {hp: i for i, hp in enumerate(dict.fromkeys(results["hookpoint"]))}
        results["_rank"] = results["hookpoint"].map(rank)
        results = results.sort_values(["_rank", "latent"], kind="stable").drop(columns="_rank")
    else:
        results = results.sort_values("latent", kind="stable")
    results = results.reset_index(drop=True)
    return RunData(files, config, info, results, judgments, scorers)


@dataclass
class Agreement:
    """How two scorers' headline metrics agree over the latents both scored."""

    a: str
    b: str
    metric_a: str
    metric_b: str
    n: int
    pearson: float | None
    spearman: float | None


def _corr(x: pd.Series, y: pd.Series, method: str) -> float | None:
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return None
    r = float(x.corr(y, method=method))
    return None if math.isnan(r) else r


def agreement(results: pd.DataFrame, scorers: list[ScorerColumns]) -> list[Agreement]:
    """Pearson and Spearman correlation of headline metrics, for every pair of scorers."""
    rated = [(s, s.headline) for s in scorers if s.headline]
    out = []
    for i, (a, ha) in enumerate(rated):
        for b, hb in rated[i + 1 :]:
            ca, cb = a.column(ha), b.column(hb)
            both = results[[ca, cb]].dropna()
            out.append(
                Agreement(
                    a.name,
                    b.name,
                    ha,
                    hb,
                    len(both),
                    _corr(both[ca], both[cb], "pearson"),
                    _corr(both[ca], both[cb], "spearman"),
                )
            )
    return out
