"""A whole checkpoint through the command line, as a user types it: `autointerp run --hookpoints all` over a
tiny model with an SAE on each of its three blocks; rows, resume, controls, report, publish, imports and the
HTTP service per (hookpoint, latent); the latent choices; and bad input found before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.checkpoint_fixtures import HOOKPOINTS, write_corpus, write_sae_run, write_subject
from helpers.report_fixtures import judge as scripted_judge
from helpers.serve_helpers import KEY, copy_run, start_server

from autointerp.cache.store import HookpointCaches
from autointerp.cli import main
from autointerp.client import Client, ServeError
from autointerp.latent_choice import choose_latents
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles, read_explanations, read_scores

JUDGE = "scripted-judge"  # the name serve_scripted.py serves too


def _options(root: Path) -> list[str]:
    return [
        "--model",
        str(root / "subject"),
        "--dictionary",
        str(root / "saes"),
        "--corpus",
        str(root / "corpus.txt"),
        "--n-tokens",
        "4096",
        "--batch-rows",
        "4",
        "--n-train",
        "8",
        "--n-test",
        "6",
        "--n-negatives",
        "6",
        "--n-train-negatives",
        "2",
        "--min-examples",
        "10",
    ]


def _labels(*extra: str) -> list[str]:
    return ["--explainer", "tokens", "--judge", JUDGE, *extra, "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoint")
    write_subject(root / "subject")
    write_sae_run(root / "saes")
    write_corpus(root / "corpus.txt")
    return root


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(
        "autointerp.stages.latent_stages.make_judge",
        lambda name, config, **_: ScriptedJudge(scripted_judge, model=name),
    )


@pytest.fixture(scope="module")
def whole(checkpoint) -> Path:
    """`autointerp run --hookpoints all` on the tiny checkpoint: 4 latents of each hookpoint."""
    out = checkpoint / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "autointerp.stages.latent_stages.make_judge",
            lambda name, config, **_: ScriptedJudge(scripted_judge, model=name),
        )
        rc = main(
            ["run", "--out", str(out), *_options(checkpoint), "--hookpoints", "all", *_labels("--max-latents", "4")]
        )
    assert rc == 0
    return out


def test_one_row_per_hookpoint_and_latent(whole, capsys):
    files = RunFiles(whole)
    table = pd.read_parquet(files.results)
    assert list(dict.fromkeys(table["hookpoint"])) == list(HOOKPOINTS)
    assert not table.duplicated(["hookpoint", "latent"]).any()
    assert (table.groupby("hookpoint").size() == 4).all() and (table["status"] == "ok").all()
    # each row's statistics are its own hookpoint's
    caches = HookpointCaches(files.cache)
    for row in table.itertuples():
        assert row.fire_windows == caches.open(row.hookpoint).state.fire_windows[row.latent]
        assert row.dictionary.endswith(f"saes/{row.hookpoint}")
    judgments = pd.read_parquet(files.judgments)
    assert set(judgments["hookpoint"]) == set(HOOKPOINTS)
    config = json.loads(files.config.read_text())
    assert config["config"]["hookpoints"] == ["all"] and config["resolved"]["hookpoints"] == list(HOOKPOINTS)
    assert {hp: v["num_latents"] for hp, v in config["resolved"]["by_hookpoint"].items()} == dict.fromkeys(
        HOOKPOINTS, 24
    )


def test_controls_borrow_labels_across_hookpoints(whole):
    table = pd.read_parquet(RunFiles(whole).results)
    donors = list(zip(table["detection_control_hookpoint"], table["detection_control_latent"], strict=True))
    own = list(zip(table["hookpoint"], table["latent"], strict=True))
    assert set(donors) <= set(own) and not any(d == o for d, o in zip(donors, own, strict=True))
    assert any(d[0] != o[0] for d, o in zip(donors, own, strict=True))  # some donor is of another hookpoint
    labels = dict(zip(own, table["explanation"], strict=True))
    assert all(labels[d] == text for d, text in zip(donors, table["detection_control_explanation"], strict=True))
    controls = [r for r in read_scores(RunFiles(whole).scores) if r.control]
    assert any(r.donor_hookpoint not in (None, r.hookpoint) for r in controls)


def test_running_the_command_again_redoes_nothing(whole, checkpoint, scripted):
    files = RunFiles(whole)
    before = files.explanations.read_bytes(), files.scores.read_bytes()
    rc = main(
        ["run", "--out", str(whole), *_options(checkpoint), "--hookpoints", "all", *_labels("--max-latents", "4")]
    )
    assert rc == 0 and (files.explanations.read_bytes(), files.scores.read_bytes()) == before


def test_a_sample_and_ranges_of_latents(whole, scripted):
    files = RunFiles(whole)
    caches = HookpointCaches(files.cache)
    rc = main(["explain", "--out", str(whole), "--sample-latents", "2", "--min-examples", "10", *_labels()])
    assert rc == 0
    explained = {(r.hookpoint, r.latent) for r in read_explanations(files.explanations)}
    for hp in HOOKPOINTS:
        eligible = [i for i in range(24) if caches.open(hp).state.fire_windows[i] >= 10]
        sample = choose_latents(eligible, hookpoint=hp, latents=None, max_latents=None, sample_latents=2, seed=0)
        assert {(hp, i) for i in sample} <= explained
    rc = main(["explain", "--out", str(whole), "--latents", "20:22,5", "--min-examples", "10", *_labels()])
    assert rc == 0
    newest = {(r.hookpoint, r.latent): r for r in read_explanations(files.explanations)}
    assert {(hp, i) for hp in HOOKPOINTS for i in (5, 20, 21)} <= set(newest)


def test_report_and_dataset_card_name_every_hookpoint(whole, tmp_path, capfd):
    from autointerp.report import build_report

    index = build_report(whole, tmp_path / "site", decode=lambda ids: [f" w{i}" for i in ids], progress=False)
    pages = {p.name for p in (tmp_path / "site" / "latents").iterdir()}
    table = pd.read_parquet(RunFiles(whole).results)
    assert pages == {f"{r.hookpoint}--{r.latent}.html" for r in table.itertuples()}
    html = index.read_text()
    assert "<th>hookpoint</th>" in html and all(f'href="latents/{hp}--' in html for hp in HOOKPOINTS)
    first = table.iloc[0]
    page = (tmp_path / "site" / "latents" / f"{first.hookpoint}--{first.latent}.html").read_text()
    donor = f"{first.detection_control_hookpoint}--{first.detection_control_latent}.html"
    assert f"Latent {first.latent} at {first.hookpoint}" in page and donor in page

    rc = main(
        ["publish", str(whole), "--repo", "alice/checkpoint", "--dry-run", "--staging-dir", str(tmp_path / "hub")]
    )
    assert rc == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "One row per (hookpoint, latent)" in card and "Per hookpoint (3 in this run)" in card
    assert all(f"`{hp}`" in card for hp in HOOKPOINTS)


def test_imported_explanations_go_to_the_hookpoint_their_layer_names(whole, tmp_path, scripted, capsys):
    files = RunFiles(whole)
    fire = HookpointCaches(files.cache).open("layers.1").state.fire_windows
    a, b = (int(i) for i in (fire >= 10).nonzero()[0][:2])  # latents of layers.1 that can be scored
    source = tmp_path / "model.layers.1_feature.json"  # EleutherAI's layout: one file per layer
    source.write_text(json.dumps({str(a): 'the tokens "river", "stone"', str(b): 'the token "market"'}))
    before = {(r.hookpoint, r.latent) for r in read_scores(files.scores)}
    argv = ["score", "--out", str(whole), "--explanations", str(source), "--controls", "none"]
    rc = main([*argv, "--min-examples", "10", "--judge", JUDGE, "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "imported 2 explanations" in out and "for layers.0, layers.1, layers.2" in out
    imported = [r for r in read_explanations(files.explanations) if (r.explainer_model or "").startswith("imported")]
    assert {(r.hookpoint, r.latent) for r in imported} == {("layers.1", a), ("layers.1", b)}
    scored = {(r.hookpoint, r.latent) for r in read_scores(files.scores)} - before
    assert scored <= {("layers.1", a), ("layers.1", b)}  # only those: no other hookpoint's latent of that index
    new = [
        r for r in read_scores(files.scores) if r.explanation in ('the tokens "river", "stone"', 'the token "market"')
    ]
    assert {(r.hookpoint, r.latent) for r in new} == {("layers.1", a), ("layers.1", b)}


def test_the_service_takes_a_hookpoint(whole, tmp_path):
    runs = tmp_path / "runs"
    served = copy_run(whole, runs / "ck")
    server = start_server(runs, tmp_path / "state")
    try:
        with Client(server.url, KEY, timeout=60) as client:
            (listed,) = client.runs()
            assert listed["hookpoints"] == dict.fromkeys(HOOKPOINTS, 24)
            table = pd.read_parquet(RunFiles(whole).results)
            row = table[table["hookpoint"] == "layers.2"].iloc[0]
            with pytest.raises(ServeError) as e:
                client.latent("ck", int(row.latent))
            assert e.value.status == 422 and "layers.0, layers.1, layers.2" in str(e.value)
            with pytest.raises(ServeError) as e:
                client.latent("ck", int(row.latent), hookpoint="layers.9")
            assert e.value.status == 404 and "no hookpoint 'layers.9'" in str(e.value)
            record = client.latent("ck", int(row.latent), hookpoint="layers.2")
            assert record["hookpoint"] == "layers.2" and record["explanation"]["explanation"] == row.explanation
            job = client.score("ck", int(row.latent), "the token river", scorers=["detection"], hookpoint="layers.2")
            done = client.job(job["id"], wait=60)
            assert done["status"] == "done", done
        rows = [r for r in read_scores(RunFiles(served).scores) if r.explanation == "the token river"]
        assert [(r.hookpoint, r.latent) for r in rows] == [("layers.2", int(row.latent))]
    finally:
        assert server.stop(), server.log.read_text()[-3000:]


# ---------------------------------------------------------------- bad input, found before the model loads


def _no_model(*args, **kwargs):
    pytest.fail("the subject model was loaded before the bad input was found")


def test_a_hookpoint_the_dictionary_lacks_lists_those_it_has(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("autointerp.stages.cache_stage.load_subject", _no_model)
    out = str(tmp_path / "r")
    rc = main(["run", "--out", out, *_options(checkpoint), "--hookpoints", "layers.0,layers.9", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no hookpoint layers.9; it has layers.0, layers.1, layers.2" in err
    rc = main(["run", "--out", out, *_options(checkpoint), "--hookpoint", "layers.0", "--hookpoints", "all"])
    assert rc == 2 and "not both" in capsys.readouterr().err
    rc = main(["run", "--out", out, *_options(checkpoint), "--sample-latents", "3", "--max-latents", "4"])
    assert rc == 2 and "--sample-latents" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("latents", "words"),
    [
        ("5:5", "argument --latents: the latent range 5:5 is empty: STOP is excluded and must be above START"),
        ("9:3", "the latent range 9:3 is empty"),
        ("3,7:", "a latent range is START:STOP with both numbers given, like 0:1000, got '7:'"),
        ("0:x", "a latent range is START:STOP"),
        ("3,seven", "expected latent indices and ranges like 3,17,100:200, got 'seven'"),
    ],
)
def test_an_empty_or_malformed_latent_range_is_a_usage_error(checkpoint, tmp_path, capsys, monkeypatch, latents, words):
    monkeypatch.setattr("autointerp.stages.cache_stage.load_subject", _no_model)
    with pytest.raises(SystemExit) as e:
        main(["run", "--out", str(tmp_path / "r"), *_options(checkpoint), "--hookpoints", "all", "--latents", latents])
    assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("hookpoints", "words"),
    [
        (",", "--hookpoints needs names (layers.4,layers.8) or 'all'"),
        ("all,layers.0", "--hookpoints is either 'all' or names, not both: all,layers.0"),
        ("layers.0,layers.0", "--hookpoints names a hookpoint twice"),
    ],
)
def test_a_malformed_hookpoint_list_is_refused(checkpoint, tmp_path, capsys, monkeypatch, hookpoints, words):
    monkeypatch.setattr("autointerp.stages.cache_stage.load_subject", _no_model)
    rc = main(["run", "--out", str(tmp_path / "r"), *_options(checkpoint), "--hookpoints", hookpoints, "--quiet"])
    assert rc == 2 and words in capsys.readouterr().err


def test_latents_beyond_one_hookpoints_dictionary_are_refused_before_caching(tmp_path, capsys, monkeypatch):
    root = tmp_path / "ck"
    write_subject(root / "subject")
    write_sae_run(root / "saes", ("layers.0", "layers.1"))
    write_sae_run(root / "saes", ("layers.2",), num_latents=16)
    write_corpus(root / "corpus.txt", documents=5)
    monkeypatch.setattr("autointerp.stages.cache_stage.load_subject", _no_model)
    rc = main(["run", "--out", str(tmp_path / "r"), *_options(root), "--hookpoints", "all", "--latents", "3,10:20"])
    err = capsys.readouterr().err
    assert rc == 2 and "--latents 10:20 out of range: the dictionary at layers.2 has 16 latents" in err
    assert not (tmp_path / "r" / "cache").exists()


def test_all_on_a_single_hookpoint_folder_just_works(checkpoint, tmp_path, scripted, capsys):
    rc = main(
        [
            "run",
            "--out",
            str(tmp_path / "r"),
            *_options(checkpoint),
            "--dictionary",
            str(checkpoint / "saes" / "layers.1"),  # the last --dictionary wins
            "--hookpoints",
            "all",
            "--controls",
            "none",
            "--max-latents",
            "2",
            *_labels(),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "24 latents at layers.1" in capsys.readouterr().out
    table = pd.read_parquet(RunFiles(tmp_path / "r").results)
    assert list(table["hookpoint"]) == ["layers.1", "layers.1"]
    assert (tmp_path / "r" / "cache" / "meta.json").is_file()  # one hookpoint: the cache folder as it always was
