"""The run logs' rows: typed, versioned, and readable whatever version wrote them.

`fixtures/logs_v1/` holds explanations.jsonl and scores.jsonl exactly as the code before schema
versions wrote them (every scorer, best-of-n candidates, a skipped latent, a scorer that crashed, an
imported explanation that replaced a label and so superseded its scores), with the results.parquet
and judgments.parquet that code materialised from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from autointerp.records import (
    SCHEMA_VERSION,
    Candidate,
    ExplanationRow,
    Judgment,
    LatentId,
    RowError,
    Score,
    ScoreRow,
    Usage,
)
from autointerp.results import RunFiles, append_row, materialize, read_explanations, read_jsonl, read_scores

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs_v1"
SCORERS = ["detection", "fuzzing", "embedding", "simulation", "surprisal", "intervention", "intervention_choice"]
PROVENANCE = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dictionary": "default", "hookpoint": "layers.10"}


def _values(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series.tolist()]


def test_rows_without_a_version_load_as_the_current_schema():
    raw = list(read_jsonl(V1 / "explanations.jsonl"))
    assert raw and all("schema_version" not in r for r in raw)
    rows = list(read_explanations(V1 / "explanations.jsonl"))
    assert [r.schema_version for r in rows] == [SCHEMA_VERSION] * len(raw)
    skipped = next(r for r in rows if r.status == "skipped")
    assert "fewer than min_examples" in skipped.error and skipped.explanation is None and skipped.train_windows is None
    chosen = next(r for r in rows if r.candidates and len(r.candidates) == 2)
    assert chosen.chosen_by == "detection" and all(isinstance(c, Candidate) for c in chosen.candidates)
    assert isinstance(chosen.usage, Usage) and chosen.usage.calls > 0
    assert all(isinstance(c.usage, Usage) and c.metric == "balanced_accuracy" for c in chosen.candidates)
    assert chosen.train_windows and chosen.train_quantiles is None  # not logged before schema 2
    imported = rows[-1]
    assert imported.explainer_model == "imported:autointerp:someone" and imported.source["format"] == "autointerp"

    scores = list(read_scores(V1 / "scores.jsonl"))
    assert {s.scorer for s in scores} == set(SCORERS)
    crashed = next(s for s in scores if s.status == "error")
    assert "RuntimeError" in crashed.error and crashed.judgments is None and crashed.metrics is None
    assert all(isinstance(j, Judgment) for s in scores for j in s.judgments or [])


def test_old_judgments_are_read_with_one_meaning_per_field():
    """Schema 1 put numbers the scorer read into `answer` (and simulation's peak into `probability`)."""
    by_scorer = {s.scorer: s for s in read_scores(V1 / "scores.jsonl") if s.status == "ok"}
    raw = {r["scorer"]: r for r in read_jsonl(V1 / "scores.jsonl") if r["status"] == "ok"}
    for name in ("surprisal", "intervention"):
        for old, new in zip(raw[name]["judgments"], by_scorer[name].judgments, strict=True):
            assert new.answer == "" and new.detail == old["answer"] and new.value == old["value"]
    for old, new in zip(raw["simulation"]["judgments"], by_scorer["simulation"].judgments, strict=True):
        assert old["probability"] is not None and new.probability is None
        assert new.answer == "" and new.detail == "predicted " + old["answer"]
    for old, new in zip(raw["detection"]["judgments"], by_scorer["detection"].judgments, strict=True):
        assert {k: getattr(new, k) for k in old} == old and new.detail == ""


def test_materialising_old_logs_gives_the_same_tables(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("explanations.jsonl", "scores.jsonl"):
        shutil.copy(V1 / name, run / name)
    materialize(RunFiles(run), PROVENANCE, SCORERS)
    before, after = pd.read_parquet(V1 / "results.parquet"), pd.read_parquet(run / "results.parquet")
    # metrics declared since (schema 3) get their columns, empty: the old rows do not hold them
    added = ["detection_negative_accuracy", "fuzzing_negative_accuracy"]
    # and the cached prompt tokens, added since: none reported, where the old row holds token counts
    cached = ["explainer_cached_prompt_tokens", *(f"{s}_cached_prompt_tokens" for s in SCORERS)]
    assert [c for c in after.columns if c not in added + cached] == list(before.columns)
    assert after[added].isna().all().all()
    for column in cached:
        counted = after[column.replace("_cached", "")].notna()
        assert (after.loc[counted, column] == 0).all() and after.loc[~counted, column].isna().all(), column
    for column in before.columns:
        assert _values(before[column]) == _values(after[column]), column
    # the superseded scores of the replaced label stay out of the table
    assert after.loc[after["latent"] == 1, "detection_n"].isna().all()

    before, after = pd.read_parquet(V1 / "judgments.parquet"), pd.read_parquet(run / "judgments.parquet")
    assert list(after.columns) == [*before.columns[:3], "control", *before.columns[3:], "detail"]
    assert not after["control"].any()  # no controls before schema 3
    moved = after["scorer"].isin(["surprisal", "intervention", "simulation"])
    for column in before.columns:
        same = _values(before.loc[~moved, column]) == _values(after.loc[~moved, column])
        assert same, column
        if column not in ("answer", "probability"):
            assert _values(before[column]) == _values(after[column]), column


def test_new_rows_carry_the_version_and_read_back_equal(tmp_path):
    path = tmp_path / "explanations.jsonl"
    row = ExplanationRow(
        latent=3,
        hookpoint="layers.10",
        status="ok",
        explanation="month names",
        explainer_model="m",
        train_windows=[4, 9],
        train_quantiles=[2, -1],
        usage=Usage(10, 2, 1),
        candidates=[Candidate("month names", 0.9, "balanced_accuracy", Usage(5, 1, 1))],
        chosen_by="detection",
    )
    append_row(path, row)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert list(read_explanations(path)) == [row]

    judgment = Judgment(1, True, True, 0.8, 2.5, 3, answer="Yes", text="x", value=None, detail="")
    score = Score(LatentId("layers.10", 3), "detection", {"auroc": 1.0}, 1, 0, [judgment], Usage(7, 1, 1))
    scores = tmp_path / "scores.jsonl"
    written = ScoreRow.of(score, hookpoint="layers.10", judge_model="j", explanation="month names")
    append_row(scores, written)
    assert list(read_scores(scores)) == [written]


def test_unreadable_rows_say_where_and_why(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps({"latent": 1, "scorer": "detection", "status": "ok", "schema_version": 99}) + "\n")
    with pytest.raises(RowError, match=r"scores.jsonl, row 1: .*newer autointerp"):
        list(read_scores(path))
    path.write_text(json.dumps({"latent": "one", "status": "ok"}) + "\n")
    with pytest.raises(RowError, match="not an integer"):
        list(read_explanations(path))


def test_control_rows_name_their_donor_and_older_rows_are_no_controls(tmp_path):
    judgment = Judgment(1, True, True, 0.8, 2.5, 3, answer="Yes", text="x")
    score = Score(LatentId("layers.10", 3), "detection", {"auroc": 0.5}, 1, 0, [judgment], Usage(7, 1, 1))
    path = tmp_path / "scores.jsonl"
    control = ScoreRow.of(score, hookpoint="layers.10", judge_model="j", explanation="commas", donor=8)
    append_row(path, control)
    assert json.loads(path.read_text())["donor"] == 8
    [read] = read_scores(path)
    assert read == control and read.control and read.explanation == "commas"
    # a schema-2 row has no donor: it scored the latent's own label, and so does one that says None
    path.write_text(
        json.dumps(
            {"latent": 3, "hookpoint": "h", "scorer": "detection", "status": "ok", "schema_version": 2, "donor": 8}
        )
        + "\n"
        + json.dumps(
            {"latent": 4, "hookpoint": "h", "scorer": "detection", "status": "ok", "schema_version": 3, "donor": None}
        )
        + "\n"
    )
    assert [r.control for r in read_scores(path)] == [False, False]
    files = RunFiles(tmp_path)
    assert set(files.scores_by_latent()) == {(3, "detection"), (4, "detection")} and not files.controls_by_latent()
    path.write_text(
        json.dumps(
            {
                "latent": 3,
                "hookpoint": "h",
                "scorer": "detection",
                "status": "ok",
                "donor": "eight",
                "schema_version": 3,
            }
        )
        + "\n"
    )
    with pytest.raises(RowError, match="donor"):
        list(read_scores(path))
