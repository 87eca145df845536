"""Reading a run folder for the report: the results table, the judgments, and which columns are scores.

The report must show scorers it has never heard of (a newer version's, someone else's), so a
scorer's metrics are found from the table itself: its declared metrics first (`scorer_metrics`,
headline first), then any other numeric `<scorer>_*` column that is not bookkeeping. A metric's
shuffled-label control, where the run has one, is the column `<scorer>_control_<metric>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp.config import RunConfig, load_config
from autointerp.errors import AutointerpError
from autointerp.results import JUDGMENT_COLUMNS, RunFiles
from autointerp.scorers import scorer_metrics
from autointerp.scorers.metrics import metric_quantile

# per-scorer columns that describe the scoring, not the explanation's quality
BOOKKEEPING = ("n", "n_failed", "judge_model", "prompt_tokens", "completion_tokens")
CONTROL = "control_"  # `<scorer>_control_<metric>`: the metric with another latent's label


class ReportError(AutointerpError):
    """The folder cannot be reported on; the message says what is missing and what to run."""


@dataclass
class ScorerColumns:
    """One scorer's metric columns in results.parquet, headline first."""

    name: str
    metrics: list[str]
    headline: str | None  # the first metric that has a value for some latent
    controls: list[str] = field(default_factory=list)  # the metrics that have a control column
    has_donor_hookpoint: bool = False

    def column(self, metric: str) -> str:
        return f"{self.name}_{metric}"

    def control_column(self, metric: str) -> str | None:
        """The column of the metric's shuffled-label control, None when the run has none."""
        return f"{self.name}_{CONTROL}{metric}" if metric in self.controls else None

    @property
    def donor_hookpoint_column(self) -> str | None:
        """The column naming each control donor's hookpoint (absent in runs written before it existed)."""
        return f"{self.name}_{CONTROL}hookpoint" if self.controls and self.has_donor_hookpoint else None

    @property
    def donor_column(self) -> str | None:
        """The column naming each latent's control donor (the latent whose label it was scored with)."""
        return f"{self.name}_{CONTROL}latent" if self.controls else None

    @property
    def donor_label_column(self) -> str | None:
        """The column holding the label each latent's control was scored with."""
        return f"{self.name}_{CONTROL}explanation" if self.controls else None

    @property
    def shown(self) -> list[str]:
        """The metrics worth a column of their own in the latent table (headline and the next one)."""
        if self.headline is None:
            return []
        rest = [m for m in self.metrics if m != self.headline and metric_quantile(m) is None]
        return [self.headline, *rest[:1]]

    @property
    def quantiles(self) -> list[tuple[int, str]]:
        """(quantile, metric) of the accuracy per activation quantile, weakest first; empty for most scorers."""
        found = [(metric_quantile(m), m) for m in self.metrics]
        return sorted((q, m) for q, m in found if q is not None)


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


def _is_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def find_scorers(results: pd.DataFrame, configured: list[str]) -> list[ScorerColumns]:
    """The scorers with columns in `results`: the configured ones in their order, then any other."""
    columns = list(results.columns)
    names = list(configured)
    names += sorted({c.removesuffix("_n_failed") for c in columns if c.endswith("_n_failed")} - set(names))
    found = []
    for name in names:
        prefix = name + "_"
        longer = [o + "_" for o in names if o != name and o.startswith(prefix)]  # "sim" vs "sim_tokens"
        own = [c[len(prefix) :] for c in columns if c.startswith(prefix) and not any(c.startswith(o) for o in longer)]
        if not own:
            continue
        declared = [m for m in scorer_metrics(name) if m in own]
        extra = [
            m
            for m in own
            if m not in declared
            and m not in BOOKKEEPING
            and not m.startswith(CONTROL)
            and _is_numeric(results[prefix + m])
        ]
        metrics = declared + extra
        with_values = [m for m in metrics if pd.to_numeric(results[prefix + m], errors="coerce").notna().any()]
        controls = [m for m in metrics if CONTROL + m in own]
        found.append(
            ScorerColumns(
                name, metrics, with_values[0] if with_values else None, controls, CONTROL + "hookpoint" in own
            )
        )
    return found


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
