"""The results of a run: append-only JSONL logs, and the Parquet tables materialised from them.

Each finished unit of work (a latent's explanation, a latent's score by one scorer together with
every judgment behind it) is one JSON line, written with a single `write` and fsynced. A crash can
only leave a torn last line, which readers ignore; a resumed run skips what the logs already hold,
so no finished work is lost or duplicated. `results.parquet` (one row per latent) and
`judgments.parquet` (one row per judged example) are rebuilt from the logs, atomically.

The rows are `ExplanationRow` and `ScoreRow` (records.py); every reader goes through
`read_explanations` / `read_scores`, which upgrade rows of older versions.

The results table's schema is read back here too: `find_scorers` says which columns are each
scorer's metrics and controls, and summarises the headline metrics over the finished latents. The
summary line of a command, the dataset card and the report all print from it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from autointerp.records import ExplanationRow, Judgment, LatentId, RowError, ScoreRow, Usage

EXPLANATIONS = "explanations.jsonl"
SCORES = "scores.jsonl"
RESULTS = "results.parquet"
JUDGMENTS = "judgments.parquet"

_lock = threading.Lock()


Row = TypeVar("Row", ExplanationRow, ScoreRow)


def append_row(path: Path, row: ExplanationRow | ScoreRow) -> None:
    append_jsonl(path, row.to_json())


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


def scan_jsonl(path: Path, start: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, end, row) of each complete row from byte `start` on: a reader that keeps up with a growing
    log reads only what was appended since `end` of the last row it saw. A torn last line ends the scan."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        for line in f:
            if not line.endswith(b"\n"):
                break
            end = offset + len(line)
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                offset = end
                continue
            yield offset, end, row
            offset = end


def read_jsonl_at(path: Path, offset: int) -> dict[str, Any]:
    """The row that starts at byte `offset` (as `scan_jsonl` gave it)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line so the next append starts on a fresh line."""
    if not path.exists():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":  # the usual case, read in one byte: the service does this often
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _typed(path: Path, read: Callable[[Any], Row]) -> Iterator[Row]:
    for number, data in enumerate(read_jsonl(path), 1):
        try:
            yield read(data)
        except (RowError, TypeError) as e:
            raise RowError(f"{path}, row {number}: {e}") from None


def read_explanations(path: Path) -> Iterator[ExplanationRow]:
    """Every row of an explanations log, oldest first, in the current schema."""
    return _typed(path, ExplanationRow.from_json)


def read_scores(path: Path) -> Iterator[ScoreRow]:
    """Every row of a scores log, oldest first, in the current schema."""
    return _typed(path, ScoreRow.from_json)


K = TypeVar("K")


def latest(rows: Iterable[Row], key: Callable[[Row], K]) -> dict[K, Row]:
    """The last row for each key (a retried unit's newest outcome wins)."""
    return {key(row): row for row in rows}


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

    def hookpoints(self) -> list[str]:
        """The hookpoints of the run's cache, in the run's order (none before the cache is started)."""
        from autointerp.cache.store import hookpoint_folders

        return list(hookpoint_folders(self.cache) or {})

    def explanation_rows(self) -> Iterator[ExplanationRow]:
        """Every row of the explanations log, oldest first: what every reader below reads (a shard of a
        distributed run reads the run's log and its own)."""
        return read_explanations(self.explanations)

    def score_rows(self) -> Iterator[ScoreRow]:
        """Every row of the scores log, oldest first."""
        return read_scores(self.scores)

    def _units(self) -> Callable[[ExplanationRow | ScoreRow], LatentId]:
        """Names a log row by (hookpoint, latent); a row that names no hookpoint (written by hand) is
        the run's, when it has one."""
        only = self.hookpoints()
        default = only[0] if len(only) == 1 else ""
        return lambda row: LatentId(row.hookpoint or default, row.latent)

    def explanations_by_unit(self) -> dict[LatentId, ExplanationRow]:
        """Each (hookpoint, latent)'s current explanation row."""
        return latest(self.explanation_rows(), self._units())

    def scores_by_unit(self) -> dict[tuple[LatentId, str], ScoreRow]:
        """Each ((hookpoint, latent), scorer)'s newest score row of its own label (controls left out)."""
        unit = self._units()
        return latest((r for r in self.score_rows() if not r.control), lambda r: (unit(r), r.scorer))

    def controls_by_unit(self) -> dict[tuple[LatentId, str], ScoreRow]:
        """Each ((hookpoint, latent), scorer)'s newest control row: its examples scored with a donor's label."""
        unit = self._units()
        return latest((r for r in self.score_rows() if r.control), lambda r: (unit(r), r.scorer))

    def explanations_by_latent(self, hookpoint: str | None = None) -> dict[int, ExplanationRow]:
        """Each latent's current explanation row, of `hookpoint` (None: the run's only one)."""
        return _by_index(self.explanations_by_unit(), hookpoint, lambda k: k)

    def scores_by_latent(self, hookpoint: str | None = None) -> dict[tuple[int, str], ScoreRow]:
        """Each (latent, scorer)'s newest score row of its own label (controls left out), of `hookpoint`."""
        return _by_index(self.scores_by_unit(), hookpoint, lambda k: k[0])

    def controls_by_latent(self, hookpoint: str | None = None) -> dict[tuple[int, str], ScoreRow]:
        """Each (latent, scorer)'s newest control row: its examples scored with a donor latent's label."""
        return _by_index(self.controls_by_unit(), hookpoint, lambda k: k[0])

    def finished_scores(self) -> set[tuple[LatentId, str, str]]:
        """((hookpoint, latent), scorer, text) of every score of a latent's own label that finished (status
        ok; controls, scores of a donor's label, are left out)."""
        unit = self._units()
        return {
            (unit(r), r.scorer, r.explanation or "") for r in self.score_rows() if r.status == "ok" and not r.control
        }

    def current_scores(self, explanations: dict[LatentId, ExplanationRow]) -> dict[tuple[LatentId, str], ScoreRow]:
        """Each ((hookpoint, latent), scorer)'s score of the latent's current explanation: its newest finished
        row of that text, else its newest row of that text (a failure). The log also holds scores of other
        labels (one since replaced, one scored through the HTTP service): they are kept, but are not the
        latent's score. A latent with no usable explanation keeps its newest score row of any text. Controls
        are left out."""
        unit = self._units()
        chosen: dict[tuple[LatentId, str], ScoreRow] = {}
        for row in self.score_rows():
            if row.control:
                continue
            e = explanations.get(unit(row))
            if e is not None and e.status == "ok" and row.explanation != e.explanation:
                continue
            key = (unit(row), row.scorer)
            held = chosen.get(key)
            if held is None or row.status == "ok" or held.status != "ok":
                chosen[key] = row
        return chosen


V = TypeVar("V")


def _by_index(rows: dict[Any, V], hookpoint: str | None, unit_of: Callable[[Any], LatentId]) -> dict[Any, V]:
    """`rows` keyed by latent index instead of (hookpoint, latent), for one hookpoint of the run."""
    if hookpoint is None:
        present = {unit_of(k).hookpoint for k in rows}
        if len(present) > 1:
            raise RowError(f"the run has several hookpoints ({', '.join(sorted(present))}): name the one to read")
    out = {}
    for key, row in rows.items():
        unit = unit_of(key)
        if hookpoint is None or unit.hookpoint == hookpoint:
            out[unit.index if key is unit else (unit.index, *key[1:])] = row
    return out


def usage_by_model(files: RunFiles) -> dict[str, Usage]:
    """Judge calls and tokens spent in this folder, per model (explainer and scorers together)."""
    from autointerp.scorers.registry import find_scorer

    spent: list[tuple[str | None, Usage | None]] = [
        (r.explainer_model, r.usage) for r in read_explanations(files.explanations)
    ]
    for r in read_scores(files.scores):
        cls = find_scorer(r.scorer)
        if cls is None or cls.needs_judge:  # a scorer that asks no LLM (embedding) names its model, spends nothing
            spent.append((r.judge_model, r.usage))
    totals: dict[str, Usage] = {}
    for model, usage in spent:
        if model and usage is not None:
            totals.setdefault(model, Usage()).add(usage)
    return totals


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _metric_columns(scorer: str, rows: Iterable[ScoreRow]) -> list[str]:
    """The scorer's declared metrics, then the accuracy per activation quantile in quantile order,
    then any other metric its rows hold (a newer version's, say)."""
    from autointerp.scorers.metrics import metric_quantile
    from autointerp.scorers.registry import scorer_metrics

    names = list(scorer_metrics(scorer))
    extra: list[str] = []
    for row in rows:
        if row.scorer == scorer:
            extra += [m for m in (row.metrics or {}) if m not in names and m not in extra]
    quantiles = sorted((m for m in extra if metric_quantile(m) is not None), key=metric_quantile)  # type: ignore[arg-type]
    return names + quantiles + [m for m in extra if metric_quantile(m) is None]


# `control`: the judgment belongs to a shuffled-label control (the latent's example, another latent's label)
JUDGMENT_COLUMNS = ["hookpoint", "latent", "scorer", "control", *(f.name for f in fields(Judgment))]


def materialize(
    files: RunFiles,
    provenance: dict[str, Any],
    scorers: list[str],
    *,
    dictionaries: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Rebuild results.parquet and judgments.parquet from the logs; returns the results table, one row per
    (hookpoint, latent), in the run's hookpoint order, then by latent.

    Columns for `scorers` (the command's), then for any other scorer the log holds: a command that
    runs other scorers than an earlier one (options are not inherited) keeps the earlier scores.
    `dictionaries` names each hookpoint's dictionary, in a run of several (the `dictionary` column)."""
    explanations = files.explanations_by_unit()
    scores = files.current_scores(explanations)
    scorers = list(dict.fromkeys([*scorers, *(name for _, name in scores)]))
    controls = files.controls_by_unit()
    order = {hp: i for i, hp in enumerate(files.hookpoints())}
    units = sorted(
        set(explanations) | {k[0] for k in scores},
        key=lambda u: (order.get(u.hookpoint, len(order)), u.hookpoint, u.index),
    )
    metric_columns = {name: _metric_columns(name, [*scores.values(), *controls.values()]) for name in scorers}
    controlled = {name for _, name in controls}  # scorers with control columns: those with a control row
    rows = []
    judgment_rows = []
    for unit in units:
        latent = unit.index
        e = explanations.get(unit)
        usage = e.usage if e is not None else None
        row: dict[str, Any] = {
            **provenance,
            "hookpoint": unit.hookpoint or provenance.get("hookpoint"),
            "latent": latent,
            "frequency": e.frequency if e else None,
            "max_activation": e.max_activation if e else None,
            "fire_windows": e.fire_windows if e else None,
            "explanation": e.explanation if e else None,
            "explainer_model": e.explainer_model if e else None,
            "status": e.status if e else "missing",
            "error": e.error if e else "",
            "explainer_prompt_tokens": usage.prompt_tokens if usage else None,
            "explainer_cached_prompt_tokens": usage.cached_prompt_tokens if usage else None,
            "explainer_completion_tokens": usage.completion_tokens if usage else None,
        }
        if dictionaries and unit.hookpoint in dictionaries:
            row["dictionary"] = dictionaries[unit.hookpoint]
        for scorer in scorers:
            s = scores.get((unit, scorer))  # of the current explanation only: a replaced label's is superseded
            metrics = (s.metrics if s else None) or {}
            for m in metric_columns[scorer]:
                row[f"{scorer}_{m}"] = metrics.get(m)
            row[f"{scorer}_n"] = s.n_examples if s else None
            row[f"{scorer}_n_failed"] = s.n_failed if s else None
            row[f"{scorer}_judge_model"] = s.judge_model if s else None
            row[f"{scorer}_prompt_tokens"] = s.usage.prompt_tokens if s and s.usage else None
            row[f"{scorer}_cached_prompt_tokens"] = s.usage.cached_prompt_tokens if s and s.usage else None
            row[f"{scorer}_completion_tokens"] = s.usage.completion_tokens if s and s.usage else None
            if s and s.status != "ok" and row["status"] == "ok":
                row["status"] = f"{scorer} {s.status}"
                row["error"] = s.error
            for j in (s.judgments if s else None) or []:
                judgment_rows.append(
                    {"hookpoint": row["hookpoint"], "latent": latent, "scorer": scorer, "control": False, **asdict(j)}
                )
            if scorer in controlled:
                # the latent's examples scored with another latent's label: its chance level, kept even
                # when the latent's own label has since changed (it is still a wrong label for them)
                c = controls.get((unit, scorer))
                control_metrics = (c.metrics if c is not None and c.status == "ok" else None) or {}
                for m in metric_columns[scorer]:
                    row[f"{scorer}_control_{m}"] = control_metrics.get(m)
                row[f"{scorer}_control_hookpoint"] = (c.donor_hookpoint or row["hookpoint"]) if c is not None else None
                row[f"{scorer}_control_latent"] = c.donor if c is not None else None
                row[f"{scorer}_control_explanation"] = c.explanation if c is not None else None
                spent = c.usage if c is not None else None  # what the control cost: as much again
                row[f"{scorer}_control_prompt_tokens"] = spent.prompt_tokens if spent else None
                row[f"{scorer}_control_cached_prompt_tokens"] = spent.cached_prompt_tokens if spent else None
                row[f"{scorer}_control_completion_tokens"] = spent.completion_tokens if spent else None
                for j in (c.judgments if c is not None else None) or []:
                    judgment_rows.append(
                        {
                            "hookpoint": row["hookpoint"],
                            "latent": latent,
                            "scorer": scorer,
                            "control": True,
                            **asdict(j),
                        }
                    )
        rows.append(row)
    df = pd.DataFrame(rows)
    int_cols = ["latent", "fire_windows"] + [f"{s}_{c}" for s in scorers for c in ("n", "n_failed", "control_latent")]
    for column in int_cols:
        if column in df:
            df[column] = df[column].astype("Int64")
    _write_parquet(df, files.results)
    _write_parquet(pd.DataFrame(judgment_rows, columns=JUDGMENT_COLUMNS), files.judgments)
    return df


# ---------------------------------------------------------------- reading the results table back

# per-scorer columns that describe the scoring, not the explanation's quality
BOOKKEEPING = ("n", "n_failed", "judge_model", "prompt_tokens", "completion_tokens")
CONTROL = "control_"  # `<scorer>_control_<metric>`: the metric with another latent's label
HEADLINE = 2  # the metrics per scorer a summary shows: the first ones each scorer declares


@dataclass
class MetricSummary:
    """One metric of one scorer over the finished latents: how many have a value, their mean and median,
    and the mean of the metric's control (None where the run has none)."""

    metric: str
    latents: int
    mean: float | None
    median: float | None
    control: float | None


@dataclass
class ScorerColumns:
    """One scorer's metric columns in results.parquet, headline first."""

    name: str
    metrics: list[str]
    headline: str | None  # the first metric that has a value for some latent
    controls: list[str] = field(default_factory=list)  # the metrics that have a control column
    has_donor_hookpoint: bool = False
    headlines: list[MetricSummary] = field(default_factory=list)  # the first declared metrics, over finished latents
    n: int = 0  # examples scored, over finished latents
    n_failed: int = 0  # of which the judge's answer could not be used

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
        from autointerp.scorers.metrics import metric_quantile

        if self.headline is None:
            return []
        rest = [m for m in self.metrics if m != self.headline and metric_quantile(m) is None]
        return [self.headline, *rest[:1]]

    @property
    def quantiles(self) -> list[tuple[int, str]]:
        """(quantile, metric) of the accuracy per activation quantile, weakest first; empty for most scorers."""
        from autointerp.scorers.metrics import metric_quantile

        found = [(metric_quantile(m), m) for m in self.metrics]
        return sorted((q, m) for q, m in found if q is not None)


def _is_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def find_scorers(results: pd.DataFrame, configured: list[str]) -> list[ScorerColumns]:
    """The scorers with columns in `results`: the configured ones in their order, then any other.

    A table may hold scorers this version has never heard of (a newer version's, someone else's), so a
    scorer's metrics are found from the table itself: its declared metrics first (`scorer_metrics`,
    headline first), then any other numeric `<scorer>_*` column that is not bookkeeping. A metric's
    shuffled-label control, where the run has one, is the column `<scorer>_control_<metric>`. The
    headline summaries are over the latents that finished ("ok")."""
    from autointerp.scorers.registry import scorer_metrics

    columns = list(results.columns)
    ok = results[results["status"] == "ok"] if "status" in results else results
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
                name,
                metrics,
                with_values[0] if with_values else None,
                controls,
                CONTROL + "hookpoint" in own,
                headlines=[_summary(ok, name, m) for m in scorer_metrics(name)[:HEADLINE] if prefix + m in results],
                n=_total(ok, prefix + "n"),
                n_failed=_total(ok, prefix + "n_failed"),
            )
        )
    return found


def _summary(finished: pd.DataFrame, scorer: str, metric: str) -> MetricSummary:
    values = pd.to_numeric(finished[f"{scorer}_{metric}"], errors="coerce").dropna()
    return MetricSummary(
        metric,
        len(values),
        float(values.mean()) if len(values) else None,
        float(values.median()) if len(values) else None,
        _mean(finished, f"{scorer}_{CONTROL}{metric}"),
    )


def _mean(df: pd.DataFrame, column: str) -> float | None:
    if column not in df:
        return None
    values = pd.to_numeric(df[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def _total(df: pd.DataFrame, column: str) -> int:
    return int(pd.to_numeric(df[column], errors="coerce").fillna(0).sum()) if column in df else 0
