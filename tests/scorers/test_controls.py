"""Shuffled-label controls: every latent's examples also scored with another latent's label, so each
score has its chance level beside it; resumable like everything else, and kept in order at the judge."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from helpers.planted import yes_no
from helpers.report_fixtures import SAMPLING as WORD_SAMPLING
from helpers.report_fixtures import write_word_tokenizer
from helpers.tiny_subjects import build_tiny_cache, decode_ids

from autointerp.api import Outcome
from autointerp.config import RunConfig, save_config
from autointerp.controls import TOO_FEW, derangement, donor_map
from autointerp.llm.ordering import OrderedJudge
from autointerp.llm.scripted import ScriptedJudge
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, run_controls, select_latents
from autointerp.records import ExplanationRow, LatentId
from autointerp.results import RunFiles, append_row, materialize, read_scores
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import DetectionScorer, FuzzingScorer
from autointerp.stages.latent_stages import latent_stages

SAMPLING = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)


def reader(messages) -> object:
    """A judge that says Yes only when the label names a word of the excerpt (with marks: of every marked span)."""
    user = messages[-1]["content"]
    label = re.search(r"Explanation of the feature: (.*)", user).group(1)
    words = re.findall(r'"([^"]+)"', label)
    excerpt = re.search(r"<excerpt>\n(.*)\n</excerpt>", user, re.DOTALL).group(1)
    spans = re.findall(r"<<(.*?)>>", excerpt) or [excerpt]
    hit = all(any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", s) for w in words) for s in spans)
    return yes_no(0.9 if hit else 0.1)


# ---------------------------------------------------------------- the derangement


def test_a_derangement_has_no_fixed_point_and_the_same_seed_gives_the_same_one():
    for n in range(2, 40):
        for seed in range(4):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
            assert derangement(n, seed) == p
    assert derangement(2, 5) == [1, 0]
    assert derangement(30, 0) != derangement(30, 1)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)
    # drawn among all derangements alike: n = 4 has 9, each about 1/9 of the seeds
    counts = Counter(tuple(derangement(4, seed)) for seed in range(900))
    assert len(counts) == 9 and min(counts.values()) > 60


def test_donors_do_not_depend_on_the_order_latents_are_listed_in():
    latents = [LatentId("layers.1", i) for i in (9, 2, 14, 5, 7)]
    donors = donor_map(latents, 3)
    assert donors == donor_map(list(reversed(latents)), 3)
    assert sorted(donors.values(), key=lambda lid: lid.index) == sorted(latents, key=lambda lid: lid.index)
    assert all(donor != lid for lid, donor in donors.items())


# ---------------------------------------------------------------- in the run


def _worker(files, cache, config, judge, summary=None) -> LatentWorker:
    return LatentWorker(
        files,
        config,
        Sampler(cache, decode_ids, config.sampling),
        None,  # --explainer tokens: no model
        judge,
        [DetectionScorer(), FuzzingScorer()],
        {"explain", "score"},
        summary or RunSummary(),
    )


def _run(files, cache, config, judge, concurrency: int = 1) -> tuple[RunSummary, list[int]]:
    latents, _ = select_latents(cache, config)
    worker = _worker(files, cache, config, judge)
    asyncio.run(process_latents(latents, worker, concurrency=concurrency, progress=False))
    asyncio.run(run_controls(latents, worker, seed=config.sampling.seed, concurrency=concurrency, progress=False))
    return worker.summary, latents


def _config(**kw) -> RunConfig:
    return RunConfig(**{"sampling": SAMPLING, "explainer": "tokens", "max_latents": 8, **kw})


def test_the_right_label_beats_its_control(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    summary, latents = _run(files, tiny_cache, _config(), ScriptedJudge(reader))
    table = materialize(files, {}, ["detection", "fuzzing"]).set_index("latent")
    explained = table.index[table["status"] == "ok"]
    assert len(explained) >= 6 and summary.controlled == len(explained)
    # each latent is scored with exactly one other latent's label, and each label lends to exactly one latent
    donors = table.loc[explained, "detection_control_latent"]
    assert (donors != explained).all() and sorted(donors) == sorted(explained)
    assert (table.loc[explained, "fuzzing_control_latent"] == donors).all()
    assert (table.loc[explained, "detection_control_explanation"] == table.loc[donors, "explanation"].values).all()
    for scorer in ("detection", "fuzzing"):
        # (a latent that fires in every window has no silent examples: its AUROC is undefined)
        right = table.loc[explained, f"{scorer}_auroc"].dropna()
        control = table.loc[right.index, f"{scorer}_control_auroc"]
        assert len(right) >= 6 and control.notna().all()
        assert right.mean() > control.mean() + 0.2, (scorer, right.mean(), control.mean())
        # every metric of the scorer has its control column
        metrics = [c.removeprefix(f"{scorer}_") for c in table if c.startswith(f"{scorer}_quantile_accuracy_")]
        assert metrics and all(f"{scorer}_control_{m}" in table for m in ["balanced_accuracy", "f1", *metrics])
    judgments = pd.read_parquet(files.judgments)
    assert judgments["control"].sum() == (~judgments["control"]).sum()  # the same examples, twice


def test_controls_resume_and_are_not_redone_when_the_donors_change(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    judge = ScriptedJudge(reader)
    _, first = _run(files, tiny_cache, _config(max_latents=4), judge)
    calls = len(judge.calls)
    before = {(r.latent, r.scorer): r.donor for r in read_scores(files.scores) if r.control}
    assert len(before) == 2 * len(first)

    _run(files, tiny_cache, _config(max_latents=4), judge)  # all done: nothing is asked
    assert len(judge.calls) == calls

    # more latents: the derangement over them pairs the first ones differently, but their controls stand
    _, latents = _run(files, tiny_cache, _config(max_latents=7), judge)
    pool = [LatentId("layers.1", i) for i in latents]
    changed = [i for i in first if donor_map(pool, 0)[LatentId("layers.1", i)].index != before[i, "detection"]]
    assert changed, "the test needs a latent whose donor the new derangement changes"
    rows = [r for r in read_scores(files.scores) if r.control]
    assert Counter((r.latent, r.scorer) for r in rows) == Counter(
        {(i, s): 1 for i in latents for s in ("detection", "fuzzing")}
    )
    assert {(r.latent, r.scorer): r.donor for r in rows if r.latent in first} == before
    new = [i for i in latents if i not in first]
    per_latent = {r.latent: r.n_examples for r in rows if r.scorer == "detection"}
    assert len(judge.calls) - calls == 2 * sum(per_latent[i] for i in new) * 2  # own and control, two scorers

    # a latent whose own label is replaced is scored again with it; its control (another's label) stays
    latent = first[0]
    old = files.explanations_by_latent()[latent]
    append_row(files.explanations, ExplanationRow(**{**old.__dict__, "explanation": 'the token "t1"'}))
    calls = len(judge.calls)
    _run(files, tiny_cache, _config(max_latents=7), judge)
    assert len(judge.calls) - calls == 2 * per_latent[latent]  # its own two scores, no control
    table = materialize(files, {}, ["detection", "fuzzing"]).set_index("latent")
    assert table.loc[latent, "detection_control_latent"] == before[latent, "detection"]
    assert pd.notna(table.loc[latent, "detection_control_recall"])


def test_with_fewer_than_two_labels_the_run_goes_on_without_controls(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    summary, latents = _run(files, tiny_cache, _config(latents=[1]), ScriptedJudge(reader))
    assert TOO_FEW in summary.messages and summary.controlled == 0
    assert not [r for r in read_scores(files.scores) if r.control]
    table = materialize(files, {}, ["detection", "fuzzing"])
    assert table["detection_auroc"].notna().all()
    assert not [c for c in table if "control" in c]


def test_a_controls_prompts_are_served_together(tmp_path, tiny_cache, inline_threads):
    """With four latents in flight, the control pass keeps each (latent, scorer)'s prompts together
    (the examples read inline, so the order the gate sees does not depend on the machine's speed)."""
    files = RunFiles(tmp_path / "run")
    files.prepare()

    class Slow(ScriptedJudge):
        async def chat(self, messages, **kw):
            await asyncio.sleep(0.0005)
            return await super().chat(messages, **kw)

    config = _config(max_latents=4)
    latents, _ = select_latents(tiny_cache, config)
    gate = OrderedJudge(Slow(reader), 1)
    worker = _worker(files, tiny_cache, config, gate)
    asyncio.run(process_latents(latents, worker, concurrency=4, progress=False))
    gate.served = []
    asyncio.run(run_controls(latents, worker, seed=0, concurrency=4, progress=False))
    keys = gate.served
    groups = sorted(set(keys))
    assert len(groups) == 4 * 2 and len(keys) == sum(r.n_examples for r in read_scores(files.scores) if r.control)
    last = {k: max(i for i, g in enumerate(keys) if g == k) for k in groups}
    assert [last[k] for k in groups] == sorted(last.values())  # (latent, scorer) groups end in order
    switches = sum(1 for a, b in zip(keys, keys[1:], strict=False) if a != b)
    assert switches <= 2 * (len(groups) - 1)  # as for the latents' own scores (test_ordering)


# ---------------------------------------------------------------- through the app: no LLM for labels


def _app_run(folder, tiny_llama, judge, **kw):
    tokenizer = write_word_tokenizer(folder / "subject")
    build_tiny_cache(folder, tiny_llama)
    config = RunConfig(model=str(tokenizer), sampling=WORD_SAMPLING, judge="judge", explainer="tokens", **kw)
    files = RunFiles(folder)
    files.prepare()
    save_config(files.config, config, {})
    # only the scorers' judge is given: building any other model (an explainer named "tokens") would fail
    summary = asyncio.run(latent_stages(files, config, {"explain", "score"}, progress=False, judges={"judge": judge}))
    return files, config, summary


def test_the_app_labels_by_tokens_scores_and_controls_with_one_judge(tmp_path, tiny_llama, capsys):
    judge = ScriptedJudge(reader, model="judge")
    files, config, summary = _app_run(tmp_path / "run", tiny_llama, judge, max_latents=5)
    table = materialize(files, {}, config.scorers)
    ok = table[table["status"] == "ok"]
    assert len(ok) >= 3 and (ok["explainer_model"] == "tokens").all()
    assert ok["explanation"].str.match(r'the tokens? "').all()
    assert summary.controlled == len(ok) and ok["detection_control_latent"].notna().all()
    print(Outcome(summary, table, config, files).describe())
    out = capsys.readouterr().out
    right, control = ok["detection_balanced_accuracy"].mean(), ok["detection_control_balanced_accuracy"].mean()
    assert f"detection: mean balanced_accuracy {right:.3f} (control {control:.3f})" in out
    assert f"{len(ok)} controlled" in out
    # the tokens explainer spent no judge call and is not in the token accounting
    from autointerp.results import usage_by_model

    assert set(usage_by_model(files)) == {"judge"}


def test_the_app_says_when_there_is_no_second_label(tmp_path, tiny_llama, capsys):
    files, config, summary = _app_run(tmp_path / "run", tiny_llama, ScriptedJudge(reader, model="judge"), max_latents=1)
    print(Outcome(summary, materialize(files, {}, config.scorers), config, files).describe())
    out = capsys.readouterr().out
    assert "the shuffled-label control needs at least two explained latents; scoring without it" in out
    assert "(control" not in out


def test_controls_none_scores_no_control(tmp_path, tiny_llama):
    files, config, summary = _app_run(
        tmp_path / "run", tiny_llama, ScriptedJudge(reader, model="judge"), max_latents=3, controls="none"
    )
    assert summary.controlled == 0 and TOO_FEW not in summary.messages
    assert not [r for r in read_scores(files.scores) if r.control]
    assert np.isfinite(materialize(files, {}, config.scorers)["detection_auroc"].dropna()).all()
