"""The Python API (`autointerp.Run`) on the tiny cache with scripted judges: the stages, the tables as
DataFrames, a notebook's running event loop, and the command line giving the same results."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers.tiny_run_judges import judges, namer, reader, tiny_run_folder

import autointerp
from autointerp.cli import main
from autointerp.config import RunConfig
from autointerp.llm.scripted import ScriptedJudge
from autointerp.sampling import SamplingSettings

SAMPLING = SamplingSettings(n_train=8, n_test=12, n_negatives=12, n_train_negatives=2, min_examples=10)
OPTIONS = {"judge": "reader", "explainer": "namer", "max_latents": 3}


@pytest.fixture
def folder(tmp_path, tiny_cache, monkeypatch) -> Path:
    """A run folder holding a copy of the tiny cache (32 latents at layers.1) and its config."""
    return tiny_run_folder(tmp_path / "run", tiny_cache, SAMPLING, monkeypatch)


def test_a_run_in_python_explains_scores_and_returns_dataframes(folder):
    run = autointerp.Run(folder, judges=judges(), progress=False, echo=None, **OPTIONS)
    assert run.config.sampling == SAMPLING  # the folder's split, though no option named it
    explained = run.explain()
    assert explained.summary.explained == 3 and explained.failed == 0
    scored = run.score()
    assert scored.summary.scored == 3 and "3 latents in" in scored.describe() and scored.failure_note() is None
    results = run.results()
    assert isinstance(results, pd.DataFrame) and len(results) == 3 and (results["status"] == "ok").all()
    pd.testing.assert_frame_equal(results, scored.results)
    assert results["explanation"].str.startswith("the tokens").all()
    judgments = run.judgments()
    assert set(judgments["scorer"]) == {"detection", "fuzzing"} and set(judgments["latent"]) == set(results["latent"])
    # the folder remembers what it defines: a later Run may leave it out, and may not contradict it
    with pytest.raises(autointerp.ConfigError, match="n_test: run has 12, requested 50"):
        autointerp.Run(folder, n_test=50, judges=judges(), progress=False, echo=None).score()


def test_a_stage_runs_inside_a_running_event_loop_as_in_a_notebook(folder):
    async def cell():
        return autointerp.Run(folder, judges=judges(), progress=False, echo=None, **OPTIONS).explain()

    assert asyncio.run(cell()).summary.explained == 3


def test_the_command_line_and_the_api_write_the_same_tables(folder, tmp_path, monkeypatch, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin)
    made = judges()
    monkeypatch.setattr("autointerp.stages.latent_stages.make_judge", lambda name, config, **_: made[name])
    argv = ["--out", str(folder), "--judge", "reader", "--explainer", "namer", "--max-latents", "3", "--quiet"]
    assert main(["explain", *argv]) == 0
    assert main(["score", *argv, "--scorers", "detection"]) == 0
    out = capsys.readouterr().out
    run = autointerp.Run(twin, judges=judges(), progress=False, echo=None, scorers=["detection"], **OPTIONS)
    run.explain()
    outcome = run.score()
    assert outcome.describe().splitlines()[1] in out  # the detection line the CLI printed
    for name in ("results", "judgments"):
        pd.testing.assert_frame_equal(getattr(run, name)(), pd.read_parquet(folder / f"{name}.parquet"))


def test_tables_before_any_stage_and_bad_options_are_user_errors(tmp_path):
    with pytest.raises(autointerp.ConfigError, match="no results.parquet yet"):
        autointerp.Run(tmp_path / "empty").results()
    with pytest.raises(autointerp.AutointerpError, match="--judge-mode must be one of"):
        autointerp.Run(tmp_path / "x", judge_mode="xml")
    with pytest.raises(autointerp.ConfigError, match="has no run yet"):
        autointerp.Run(tmp_path / "x", progress=False, echo=None).explain()
    assert not (tmp_path / "x" / "config.json").exists()


def test_quiet_is_the_command_lines_word_for_no_progress_bars(folder, capsys):
    """`Run(..., quiet=True)` is `--quiet`: accepted as a keyword, not refused as an unknown setting."""
    run = autointerp.Run(folder, judges=judges(), quiet=True, echo=None, **OPTIONS)
    assert run.progress is False and "quiet" not in run.explicit
    assert run.explain().summary.explained == 3
    assert "100%" not in capsys.readouterr().err  # no progress bar was drawn
    assert autointerp.Run(folder, quiet=False).progress is True and autointerp.Run(folder).progress is True
    assert autointerp.Run(folder, progress=False, quiet=True).progress is False
    with pytest.raises(autointerp.ConfigError, match="contradict"):
        autointerp.Run(folder, progress=True, quiet=True)


def test_a_config_object_counts_only_what_differs_from_the_defaults(folder):
    run = autointerp.Run(folder, RunConfig(judge="reader", max_latents=2), explainer="namer")
    assert run.explicit == {"judge", "max_latents", "explainer"}
    assert run.config.max_latents == 2 and run.config.sampling == SAMPLING


def test_the_summary_of_a_small_run_ends_with_a_line_per_latent(folder):
    from autointerp.api import TABLE_MAX_LATENTS

    run = autointerp.Run(folder, judges=judges(), progress=False, echo=None, **OPTIONS)
    run.explain()
    outcome = run.score()
    lines = outcome.describe().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["latent"])
    assert lines[start].split() == ["latent", "detection", "auroc", "control", "fuzzing", "auroc", "control", "label"]
    table = outcome.results
    rows = lines[start + 1 : start + 1 + len(table)]
    for line, (_, row) in zip(rows, table.iterrows(), strict=True):
        cells = line.split(maxsplit=5)
        assert int(cells[0]) == row["latent"] and cells[5] == row["explanation"]
        shown = [float("nan") if c == "-" else float(c) for c in cells[1:5]]
        wanted = [
            row[c] for c in ("detection_auroc", "detection_control_auroc", "fuzzing_auroc", "fuzzing_control_auroc")
        ]
        assert shown == pytest.approx(wanted, abs=0.005, nan_ok=True)
    assert lines[start + 1 + len(table)].startswith("results: ")
    assert any(line.split()[1] != "-" for line in rows)
    # a run too big to list points at results.parquet only
    big = pd.concat([table] * (TABLE_MAX_LATENTS // len(table) + 1), ignore_index=True)
    from autointerp.api import Outcome

    assert not any(
        line.split()[:1] == ["latent"]
        for line in Outcome(outcome.summary, big, outcome.config, outcome.files).describe().splitlines()
    )


def test_the_latent_table_names_the_hookpoint_when_a_run_has_several():
    from autointerp.api import latent_table

    table = pd.DataFrame(
        {
            "hookpoint": ["layers.2", "layers.10"],
            "latent": [5, 5],
            "status": ["ok", "failed"],
            "error": [None, "no token is marked"],
            "explanation": ["month names", None],
            "detection_auroc": [0.91, float("nan")],
        }
    )
    header, first, second = latent_table(table, ["detection"])
    assert header.split() == ["latent", "detection", "auroc", "label"]  # no control column without controls
    assert first.split() == ["layers.2:5", "0.91", "month", "names"]
    assert second.split()[:2] == ["layers.10:5", "-"] and "(failed: no token is marked)" in second
    assert latent_table(table.iloc[:1], ["detection"])[1].split()[0] == "5"


def slot_reader(messages):
    """`reader`, asked about numbered excerpts at once (slots mode), answering one line each."""
    from helpers.planted import slot_excerpts, slot_reply

    explanation, excerpts = slot_excerpts(messages)
    one = [
        [{"role": "user", "content": f"Explanation of the feature: {explanation}\n<excerpt>\n{e}\n</excerpt>"}]
        for e in excerpts
    ]
    return slot_reply([0.9 if reader(m).text == "Yes" else 0.1 for m in one])


def test_slots_mode_costs_fewer_tokens_and_the_summary_prices_each_stage(folder, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(
        '{"reader": {"prompt": 1.0, "completion": 4.0, "cached_prompt": 0.25}, '
        '"namer": {"prompt": 2.0, "completion": 8.0}}'
    )
    run = autointerp.Run(folder, judges=judges(), progress=False, echo=None, prices=str(prices), **OPTIONS)
    run.explain()
    one = run.score()
    twin = folder.parent / "slots"
    shutil.copytree(folder, twin, ignore=shutil.ignore_patterns("*.jsonl", "*.parquet"))
    batched = {
        "reader": ScriptedJudge(slot_reader, model="reader", prefix_cache=True),
        "namer": ScriptedJudge(namer, model="namer"),
    }
    run = autointerp.Run(
        twin, judges=batched, progress=False, echo=None, prices=str(prices), judge_mode="slots", batch_size=6, **OPTIONS
    )
    run.explain()
    slots = run.score()
    a, b = one.results, slots.results
    assert list(a["latent"]) == list(b["latent"])
    for column in ("detection_balanced_accuracy", "detection_auroc", "fuzzing_balanced_accuracy", "fuzzing_auroc"):
        pd.testing.assert_series_equal(b[column], a[column])  # the same answers, read from lines
    assert b["detection_balanced_accuracy"].notna().any()
    for scorer in ("detection", "fuzzing"):
        assert (b[f"{scorer}_prompt_tokens"] < a[f"{scorer}_prompt_tokens"] / 2).all()
        assert (b[f"{scorer}_cached_prompt_tokens"] > 0).all()  # the system prompt and the label come first
        assert (b[f"{scorer}_control_prompt_tokens"] > 0).all()
        assert (b[f"{scorer}_n_failed"] == 0).all()
    text = slots.describe()
    assert "per 1,000 latents (prices from" in text
    for stage in ("explainer (namer", "detection (reader", "fuzzing (reader", "detection_control (reader"):
        assert f"  {stage}, 3 latents): " in text, text
    assert re.search(r"all stages: \$\d+\.\d{4} per 1,000 latents", text)
    # the card gives the same figures
    from autointerp.hub import PublishOptions, dataset_card, read_run_to_publish
    from autointerp.llm.accounting import PriceTable

    card = dataset_card(read_run_to_publish(twin), PublishOptions("a/b", prices=PriceTable.load(prices)))
    assert "## Judge cost" in card and "| `detection` | reader | 3 |" in card and "USD cached prompt" in card
