"""The run loop: per-latent failure isolation, resume after a kill, nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest
from helpers.planted import yes_no
from helpers.tiny_subjects import decode_ids

from autointerp.config import ConfigError, RunConfig
from autointerp.llm.base import JudgeError
from autointerp.llm.scripted import ScriptedJudge
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents
from autointerp.results import RunFiles, materialize, read_jsonl
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import DetectionScorer, FuzzingScorer
from autointerp.settings import ExplainerSettings

SAMPLING = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)
# where a test counts explainer calls: one per latent (the phrase check's are counted in test_label_check.py)
NO_PHRASE_CHECK = ExplainerSettings(phrase_check=False)


class Killed(BaseException):
    """Stands in for SIGKILL: escapes every `except Exception`."""


def _config(**kw) -> RunConfig:
    return RunConfig(**{"sampling": SAMPLING, "max_latents": 6, **kw})


def _explainer(messages):
    return "[EXPLANATION]: tokens t1 to t9"


def _detector(messages):
    return yes_no(0.8 if " t1" in messages[-1]["content"] else 0.3)


def _run(files, cache, config, explainer, judge, stages=frozenset({"explain", "score"})):
    latents, _ = select_latents(cache, config)
    worker = LatentWorker(
        files,
        config,
        Sampler(cache, decode_ids, config.sampling),
        explainer,
        judge,
        [DetectionScorer(), FuzzingScorer()],
        set(stages),
        RunSummary(),
    )
    return asyncio.run(process_latents(latents, worker, progress=False)), latents


def test_one_latents_crash_is_recorded_and_the_run_goes_on(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    calls = {"n": 0}

    def sometimes_crashes(messages):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("backend exploded")
        return _explainer(messages)

    summary, latents = _run(files, tiny_cache, _config(), ScriptedJudge(sometimes_crashes), ScriptedJudge(_detector))
    rows = files.explanations_by_latent()
    assert [rows[i].status for i in latents].count("error") == 1
    bad = next(r for r in rows.values() if r.status == "error")
    assert "backend exploded" in bad.error and "Traceback" in bad.error
    assert summary.scored == len(latents) - 1
    table = materialize(files, {"model": "tiny"}, ["detection", "fuzzing"])
    assert len(table) == len(latents)
    assert (table["status"] == "error").sum() == 1


def test_resume_after_kill_finishes_without_duplicates(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = _config(explain=NO_PHRASE_CHECK)
    n_calls = {"n": 0}

    def dies_midway(messages):
        n_calls["n"] += 1
        if n_calls["n"] == 40:
            raise Killed
        return _detector(messages)

    with pytest.raises(Killed):
        _run(files, tiny_cache, config, ScriptedJudge(_explainer), ScriptedJudge(dies_midway))
    done_before = {k for k, v in files.scores_by_latent().items() if v.status == "ok"}
    explained_before = {k for k, v in files.explanations_by_latent().items() if v.status == "ok"}
    assert 0 < len(done_before) < 12
    # a torn line, as a kill during a write would leave
    with open(files.scores, "a") as f:
        f.write('{"latent": 99, "scor')
    files.prepare()

    explainer, judge = ScriptedJudge(_explainer), ScriptedJudge(_detector)
    summary, latents = _run(files, tiny_cache, config, explainer, judge)
    # latents explained before the kill are not explained again
    assert len(explainer.calls) == len(latents) - len(explained_before)
    expl = files.explanations_by_latent()
    per_scorer = {i: expl[i].n_test + expl[i].n_negatives for i in latents}
    expected_calls = 2 * sum(per_scorer.values()) - sum(per_scorer[i] for i, _ in done_before)
    assert len(judge.calls) == expected_calls  # finished (latent, scorer) pairs were not asked again

    raw_scores = list(read_jsonl(files.scores))
    ok_pairs = [(r["latent"], r["scorer"]) for r in raw_scores if r["status"] == "ok"]
    assert len(ok_pairs) == len(set(ok_pairs)) == 2 * len(latents)
    ok_expl = [r["latent"] for r in read_jsonl(files.explanations) if r["status"] == "ok"]
    assert sorted(ok_expl) == sorted(set(ok_expl)) == sorted(latents)

    table = materialize(files, {"model": "tiny"}, ["detection", "fuzzing"])
    assert sorted(table["latent"]) == sorted(latents)
    has_negatives = [files.explanations_by_latent()[i].n_negatives > 0 for i in table["latent"]]
    for col in ("detection_balanced_accuracy", "fuzzing_balanced_accuracy", "detection_auroc"):
        # a latent active in every window has no negatives: its balanced accuracy is undefined (NaN), not 0
        assert table[col].notna().tolist() == has_negatives
        assert table[col].dropna().between(0, 1).all()
    judgments = pd.read_parquet(files.judgments)
    assert len(judgments) == 2 * sum(per_scorer.values())


def test_a_score_with_no_usable_answer_is_a_failure_and_done_again_on_resume(tmp_path, tiny_cache):
    """A judge that goes away mid-run: every answer fails. That is no score of the latent: it is counted
    as a failure (the command exits non-zero) and asked again when the run is resumed."""
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = _config(max_latents=2)

    def gone(messages):
        raise JudgeError("connection refused")

    summary, latents = _run(files, tiny_cache, config, ScriptedJudge(_explainer), ScriptedJudge(gone))
    rows = files.scores_by_latent()
    assert len(rows) == 2 * len(latents) and summary.failed == len(latents) == 2
    for row in rows.values():
        assert row.status == "failed" and row.n_failed == row.n_examples > 0
        assert "no judge answer could be used" in row.error and "connection refused" in row.error
    table = materialize(files, {}, ["detection", "fuzzing"])
    assert (table["status"] == "detection failed").all() and table["error"].str.contains("connection refused").all()

    summary, _ = _run(files, tiny_cache, config, ScriptedJudge(_explainer), ScriptedJudge(_detector))
    assert summary.failed == 0 and all(r.status == "ok" for r in files.scores_by_latent().values())


def test_results_keep_the_scores_of_scorers_an_earlier_command_ran(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    _run(files, tiny_cache, _config(max_latents=2), ScriptedJudge(_explainer), ScriptedJudge(_detector))
    # a later command that runs another scorer (its options are its own, not the folder's)
    table = materialize(files, {}, ["embedding"])
    assert list(table.columns).index("embedding_n") < list(table.columns).index("detection_n")
    assert table["embedding_n"].isna().all()
    assert table["detection_n"].notna().all() and table["fuzzing_n"].notna().all()


def test_score_stage_uses_the_stored_explanations_and_split(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = _config()
    _run(files, tiny_cache, config, ScriptedJudge(_explainer), None, stages={"explain"})
    assert not files.scores.exists() or not list(read_jsonl(files.scores))
    judge = ScriptedJudge(_detector)
    _run(files, tiny_cache, config, None, judge, stages={"score"})
    scores = list(read_jsonl(files.scores))
    labels = {r["latent"]: r["explanation"] for r in read_jsonl(files.explanations)}
    assert all(labels[r["latent"]].startswith("tokens t1 to t9") for r in scores)
    assert all(r["explanation"] == labels[r["latent"] if r.get("donor") is None else r["donor"]] for r in scores)
    # the scorer saw none of the windows the explainer saw
    train = {r["latent"]: set(r["train_windows"]) for r in read_jsonl(files.explanations)}
    for r in scores:
        assert not train[r["latent"]] & {j["window"] for j in r["judgments"]}


def test_explicit_latents_that_never_fire_are_reported(tmp_path, tiny_cache):
    rare = [i for i in range(tiny_cache.num_latents) if tiny_cache.state.fire_windows[i] < 10]
    if not rare:
        pytest.skip("no rare latent in the tiny cache")
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = _config(latents=[rare[0]])
    summary, _ = _run(files, tiny_cache, config, ScriptedJudge(_explainer), ScriptedJudge(_detector))
    assert summary.skipped == 1
    row = files.explanations_by_latent()[rare[0]]
    assert row.status == "skipped" and "fewer than min_examples" in row.error
    table = materialize(files, {}, ["detection"])
    assert table.loc[0, "status"] == "skipped"


def test_latent_out_of_range_is_an_error(tiny_cache):
    with pytest.raises(ConfigError, match="out of range"):
        select_latents(tiny_cache, _config(latents=[10_000]))


def test_results_rows_are_json_lines(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    _run(files, tiny_cache, _config(max_latents=1), ScriptedJudge(_explainer), ScriptedJudge(_detector))
    for line in files.scores.read_text().splitlines():
        json.loads(line)


def test_usage_is_summed_per_model(tmp_path, tiny_cache):
    from autointerp.llm.accounting import PriceTable, cost
    from autointerp.results import usage_by_model

    files = RunFiles(tmp_path / "run")
    files.prepare()
    _run(
        files,
        tiny_cache,
        _config(max_latents=2, explain=NO_PHRASE_CHECK),
        ScriptedJudge(_explainer, model="ex"),
        ScriptedJudge(_detector, model="jd"),
    )
    totals = usage_by_model(files)
    assert set(totals) == {"ex", "jd"}
    assert totals["ex"].calls == 2
    n_items = sum(r["n_examples"] for r in read_jsonl(files.scores))
    assert totals["jd"].calls == n_items and totals["jd"].prompt_tokens > 0
    prices = PriceTable.from_mapping({"jd": {"prompt": 1.0, "completion": 2.0}})
    assert cost(totals["jd"], "jd", prices) == pytest.approx(
        (totals["jd"].prompt_tokens + 2 * totals["jd"].completion_tokens) / 1e6
    )


def test_a_score_of_another_label_does_not_replace_the_current_ones(tmp_path, tiny_cache):
    """The HTTP service scores any label a client sends: such rows stay in scores.jsonl, but the results
    table keeps showing the latent's current explanation's score, and a resumed run scores nothing again."""
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = _config(max_latents=2)
    _, latents = _run(files, tiny_cache, config, ScriptedJudge(_explainer), ScriptedJudge(_detector))
    before = materialize(files, {}, ["detection", "fuzzing"])
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, config.sampling),
        None,
        ScriptedJudge(_detector),
        [DetectionScorer()],
        {"score"},
        RunSummary(),
    )
    (row,) = asyncio.run(worker.score_text(latents[0], "tokens t2 only"))
    assert row.status == "ok" and row.explanation == "tokens t2 only"
    after = materialize(files, {}, ["detection", "fuzzing"])
    pd.testing.assert_frame_equal(before, after)
    judge = ScriptedJudge(_detector)
    _run(files, tiny_cache, config, ScriptedJudge(_explainer), judge)
    assert judge.calls == []
