"""Scoring explanations made elsewhere: the five readers, layer matching, the import report, and an
end-to-end `autointerp score --explanations` on the tiny cache with a judge that can read."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.planted import _excerpt, yes_no

from autointerp.cli import main
from autointerp.config import RunConfig, save_config
from autointerp.explanation_sources import SourceEntry, SourceError, detect_format, layer_key, read_explanations
from autointerp.importing import ExplanationImportError, import_explanations, match_entries
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles, materialize, read_jsonl
from autointerp.sampling import SamplingSettings

SAMPLING = SamplingSettings(n_train=8, n_test=12, n_negatives=12, n_train_negatives=2, min_examples=10)


# ---------------------------------------------------------------- sample files, one per format


def write_neuronpedia(folder: Path, rows: list[dict], batches: int = 2) -> Path:
    """An export folder: explanations/batch-N.jsonl.gz, the rows spread over `batches` files."""
    out = folder / "explanations"
    out.mkdir(parents=True)
    for b in range(batches):
        with gzip.open(out / f"batch-{b}.jsonl.gz", "wt", encoding="utf-8") as f:
            for row in rows[b::batches]:
                f.write(json.dumps(row) + "\n")
    return folder


def np_row(layer: str, index, description, model: str = "gpt-4o-mini") -> dict:
    return {
        "modelId": "gemma-2-2b",
        "layer": layer,
        "index": str(index),
        "description": description,
        "typeName": "oai_token-act-pair",
        "explanationModelName": model,
        "authorId": "x",
    }


def write_delphi(folder: Path, explanations: dict[tuple[str, int], str], model: str | None = "llama-70b") -> Path:
    (folder / "explanations").mkdir(parents=True)
    for (hookpoint, latent), text in explanations.items():
        (folder / "explanations" / f"{hookpoint}_latent{latent}.txt").write_bytes(json.dumps(text).encode())
    if model:
        (folder / "run_config.json").write_text(json.dumps({"explainer_model": model, "hookpoints": ["layers.10"]}))
    return folder


def write_eleuther(path: Path, explanations: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(explanations))
    return path


def write_saebench(path: Path, explanations: dict, hook: str = "blocks.10.hook_resid_post") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "eval_type_id": "autointerp",
                "eval_config": {"model_name": "gemma-2-2b"},
                "eval_result_metrics": {"autointerp": {"autointerp_score": 0.8}},
                "sae_lens_id": "layer_10/width_16k/average_l0_71",
                "sae_cfg_dict": {"d_sae": 16384, "hook_name": hook, "hook_layer": 10},
                "eval_result_unstructured": {
                    str(k): {"latent": k, "explanation": v, "score": 0.9, "predictions": [1]}
                    for k, v in explanations.items()
                },
            }
        )
    )
    return path


def write_our_log(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- readers


def test_neuronpedia_export_is_read_from_gzipped_batches(tmp_path):
    rows = [np_row("10-gemmascope-res-16k", i, f"text {i}") for i in range(5)]
    rows.append({**np_row("10-gemmascope-res-16k", "x", "bad index")})
    folder = write_neuronpedia(tmp_path / "np", rows)
    for path in (folder, folder / "explanations", folder / "explanations" / "batch-0.jsonl.gz"):
        assert detect_format(path) == "neuronpedia"
    fmt, entries = read_explanations(folder)
    assert fmt == "neuronpedia" and len(entries) == 6
    good = sorted((e for e in entries if not e.problem), key=lambda e: e.latent)
    assert [e.latent for e in good] == [0, 1, 2, 3, 4]
    assert good[3].text == "text 3" and good[3].layer == "10-gemmascope-res-16k"
    assert good[3].explainer_model == "gpt-4o-mini" and good[3].extra["typeName"] == "oai_token-act-pair"
    assert good[3].origin.endswith(".jsonl.gz:2")
    (bad,) = [e for e in entries if e.problem]
    assert bad.latent is None and "'x'" in bad.problem


def test_delphi_folder_names_hookpoint_latent_and_explainer(tmp_path):
    folder = write_delphi(tmp_path / "delphi", {("layers.10", 3): "the word 'the'", (".model.layers.11", 7): "dogs"})
    (folder / "explanations" / "layers.10_latent9.txt").write_text("plain text, not JSON")
    assert detect_format(folder) == "delphi"
    assert detect_format(folder / "explanations" / "layers.10_latent3.txt") == "delphi"
    _, entries = read_explanations(folder)
    by = {(e.layer, e.latent): e for e in entries}
    assert by[("layers.10", 3)].text == "the word 'the'"
    assert by[(".model.layers.11", 7)].text == "dogs"
    assert by[("layers.10", 9)].text == "plain text, not JSON"
    assert all(e.explainer_model == "llama-70b" and e.source == "delphi" for e in entries)


def test_eleuther_file_takes_its_layer_from_the_file_name(tmp_path):
    path = write_eleuther(tmp_path / "res" / "model.layers.11_feature.json", {"0": "commas", "5": "Paris", "x": "?"})
    assert detect_format(path) == "eleuther" and detect_format(path.parent) == "eleuther"
    _, entries = read_explanations(path)
    assert {(e.layer, e.latent, e.text) for e in entries if not e.problem} == {
        ("model.layers.11", 0, "commas"),
        ("model.layers.11", 5, "Paris"),
    }
    assert [e.problem for e in entries if e.problem] == ["key 'x' is not a latent index"]
    # a file whose name names no layer: the entries fit any run (layer None)
    _, entries = read_explanations(write_eleuther(tmp_path / "mine.json", {"1": "a"}))
    assert entries[0].layer is None


def test_saebench_results_name_the_hook(tmp_path):
    path = write_saebench(tmp_path / "sae_gemma_eval_results.json", {3: "months", 8: "cats"})
    assert detect_format(path) == "saebench" and detect_format(tmp_path) == "saebench"
    _, entries = read_explanations(path)
    assert {(e.latent, e.text) for e in entries} == {(3, "months"), (8, "cats")}
    assert all(e.layer == "blocks.10.hook_resid_post" and e.extra["score"] == 0.9 for e in entries)


def test_our_log_gives_each_latents_newest_row_and_reports_failures(tmp_path):
    run = tmp_path / "run"
    write_our_log(
        run / "explanations.jsonl",
        [
            {"latent": 1, "hookpoint": "layers.10", "status": "error", "explanation": None},
            {"latent": 1, "hookpoint": "layers.10", "status": "ok", "explanation": "months", "explainer_model": "qwen"},
            {"latent": 2, "hookpoint": "layers.10", "status": "failed", "explanation": None},
        ],
    )
    assert detect_format(run) == "autointerp" and detect_format(run / "explanations.jsonl") == "autointerp"
    _, entries = read_explanations(run)
    assert len(entries) == 2
    one = next(e for e in entries if e.latent == 1)
    assert (one.text, one.explainer_model, one.layer, one.problem) == ("months", "qwen", "layers.10", "")
    two = next(e for e in entries if e.latent == 2)
    assert "failed" in two.problem


def test_our_results_parquet(tmp_path):
    path = tmp_path / "results.parquet"
    pd.DataFrame(
        {
            "hookpoint": ["layers.10", "layers.10"],
            "latent": [4, 5],
            "explanation": ["x", None],
            "explainer_model": ["m", "m"],
            "status": ["ok", "skipped"],
        }
    ).to_parquet(path)
    assert detect_format(path) == "autointerp"
    _, entries = read_explanations(path)
    assert [(e.latent, e.text, bool(e.problem)) for e in entries] == [(4, "x", False), (5, None, True)]


def test_unknown_shapes_say_what_is_expected(tmp_path):
    weird = tmp_path / "weird.json"
    weird.write_text("[1, 2]")
    with pytest.raises(SourceError, match="neither SAEBench.*nor an EleutherAI"):
        detect_format(weird)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="delphi output folder"):
        detect_format(tmp_path / "empty")
    with pytest.raises(SourceError, match="not found"):
        read_explanations(tmp_path / "nope.json")
    eleuther = write_eleuther(tmp_path / "layers.3_feature.json", {"1": "a"})
    with pytest.raises(SourceError, match="eval_result_unstructured"):
        read_explanations(eleuther, "saebench")  # forcing the wrong format fails loudly


def test_a_jsonl_line_that_is_not_json_is_named_with_the_parsers_complaint(tmp_path):
    broken = tmp_path / "mine.jsonl"
    broken.write_text('{"latent": 1, "explanation": "commas"\n')  # the closing brace is missing
    with pytest.raises(SourceError, match=r"mine\.jsonl:1: not JSON \(Expecting ',' delimiter"):
        detect_format(broken)
    # further down the file, such a line is left out with the same reason, which the import report lists
    later = tmp_path / "later.jsonl"
    later.write_text(
        json.dumps({"latent": 1, "hookpoint": "layers.1", "explanation": "commas"})
        + "\n{latent: 2}\n"
        + json.dumps({"latent": 3, "hookpoint": "layers.1", "explanation": "dots"})
        + "\n"
    )
    _, entries = read_explanations(later)
    (bad,) = [e for e in entries if e.problem]
    assert bad.origin.endswith("later.jsonl:2") and bad.problem.startswith("not JSON (Expecting property name")
    assert sorted(e.latent for e in entries if not e.problem) == [1, 3]


# ---------------------------------------------------------------- layer names


@pytest.mark.parametrize(
    "name, layer, site",
    [
        ("layers.10", 10, "resid"),
        (".model.layers.10", 10, "resid"),
        ("model.layers.10", 10, "resid"),
        ("blocks.10.hook_resid_post", 10, "resid"),
        ("blocks.11.hook_resid_pre", 10, "resid"),
        ("10-gemmascope-res-16k", 10, "resid"),
        ("6-res_post_32k-oai", 6, "resid"),
        ("10-gemmascope-mlp-16k", 10, "mlp"),
        ("layers.10.mlp", 10, "mlp"),
        ("blocks.10.hook_mlp_out", 10, "mlp"),
        ("0-att-kk", 0, "attn"),
        ("layers.4.self_attn", 4, "attn"),
        ("blocks.3.hook_mlp_in", 3, "resid_mid"),
        ("layer_10/width_16k/average_l0_71", 10, None),
        ("embed", None, None),
    ],
)
def test_layer_names_of_every_dialect(name, layer, site):
    key = layer_key(name)
    assert (key.layer, key.site) == (layer, site)


def test_layer_keys_fit_on_block_and_site():
    run = layer_key("layers.10")
    assert layer_key("10-gemmascope-res-16k").fits(run) and layer_key("layer_10/width_16k").fits(run)
    assert not layer_key("10-gemmascope-mlp-16k").fits(run)
    assert not layer_key("11-gemmascope-res-16k").fits(run)
    assert not layer_key("embed").fits(run)


# ---------------------------------------------------------------- matching


def _entry(latent, text="x", layer="layers.10", origin=None) -> SourceEntry:
    return SourceEntry("neuronpedia", origin or f"f:{latent}", layer, latent, text)


def test_matching_keeps_the_runs_layer_and_says_why_for_the_rest():
    entries = [
        _entry(0, "a"),
        _entry(1, "b", layer="10-gemmascope-res-16k"),
        _entry(0, "a again"),
        _entry(2, "  "),
        _entry(99, "far"),
        _entry(3, "other", layer="20-gemmascope-res-16k"),
        _entry(4, "other", layer="20-gemmascope-res-16k"),
        _entry(5, "mlp", layer="10-gemmascope-mlp-16k"),
        SourceEntry("neuronpedia", "f:bad", "layers.10", None, "t", problem="index 'q' is not a latent index"),
    ]
    m = match_entries(entries, hookpoint="layers.10", num_latents=10)
    assert {k: v.text for k, v in m.accepted.items()} == {0: "a", 1: "b"}
    assert {u.kind for u in m.unused} == {"duplicate", "empty", "out_of_range", "unreadable"}
    reasons = {u.kind: u.reason for u in m.unused}
    assert "f:0" in reasons["duplicate"] and "10 latents (0..9)" in reasons["out_of_range"]
    assert {k: (v.entries, v.latents) for k, v in m.other_layers.items()} == {
        "20-gemmascope-res-16k": (2, [3, 4]),
        "10-gemmascope-mlp-16k": (1, [5, 5]),
    }
    # naming the file's layer takes it whatever the run's hookpoint is called
    m = match_entries(entries, hookpoint="layers.10", num_latents=10, layer="20-gemmascope-res-16k")
    assert sorted(m.accepted) == [3, 4]
    m = match_entries(entries, hookpoint="layers.10", num_latents=10, latents=[1])
    assert sorted(m.accepted) == [1] and "not_selected" in {u.kind for u in m.unused}


# ---------------------------------------------------------------- a tiny run folder


def make_run(tmp_path: Path, tiny_cache, **config) -> RunFiles:
    """A run folder that holds a copy of the tiny cache (hookpoint layers.1, 32 latents) and its config."""
    files = RunFiles(tmp_path / "run")
    files.prepare()
    shutil.copytree(tiny_cache.folder, files.cache)
    meta = tiny_cache.meta
    save_config(
        files.config,
        RunConfig(model="tiny", sampling=SAMPLING, **config),
        {
            "model": "tiny",
            "dictionary": meta.dictionary,
            "hookpoint": meta.hookpoint,
            "num_latents": meta.num_latents,
            "n_tokens": meta.n_tokens,
        },
    )
    return files


def firing_tokens(cache, latent: int) -> tuple[list[int], list[int]]:
    """Token ids on which the latent fires nearly always, and ids on which it never fires."""
    tokens = np.asarray(cache.tokens)
    fired = np.zeros(len(tokens), bool)
    counts = np.diff(cache.indptr)
    owner = np.repeat(np.arange(len(tokens)), counts)
    fired[owner[np.asarray(cache.latents) == latent]] = True
    seen = np.bincount(tokens, minlength=96)
    rate = np.bincount(tokens[fired], minlength=96) / np.maximum(seen, 1)
    return [int(t) for t in np.flatnonzero(rate > 0.5)], [int(t) for t in np.flatnonzero((rate == 0) & (seen > 0))]


def scoreable_latents(cache, n: int = 2) -> list[int]:
    """Latents that fire in enough windows, but not in all (so there are negatives), on a few token ids."""
    out = []
    for latent in range(cache.num_latents):
        fire = cache.state.fire_windows[latent]
        specific = 0 < len(firing_tokens(cache, latent)[0]) <= 12
        if specific and SAMPLING.min_examples * 2 <= fire <= cache.meta.n_windows - 40:
            out.append(latent)
    assert len(out) >= n, "the tiny cache has too few token-specific latents"
    return out[:n]


def describe(ids: list[int]) -> str:
    return "the tokens " + ", ".join(f"t{i}" for i in ids)


def token_oracle(messages) -> object:
    """A judge that reads explanations of the form 'the tokens t3, t17': Yes when the excerpt holds one of
    them (or, with marks, when every marked span does)."""
    explanation, excerpt = _excerpt(messages)
    named = set(re.findall(r"\bt(\d+)\b", explanation))
    marked = re.findall(r"<<(.*?)>>", excerpt)
    if marked:
        hit = all(set(re.findall(r"\bt(\d+)\b", m)) & named for m in marked)
    else:
        hit = bool(set(re.findall(r"\bt(\d+)\b", excerpt)) & named)
    return yes_no(0.9 if hit else 0.1)


class _TokenNames:
    """Stands in for the subject tokenizer: token i reads " t{i}"."""

    all_special_ids: list[int] = []

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)


@pytest.fixture
def oracle_judge(monkeypatch) -> ScriptedJudge:
    judge = ScriptedJudge(token_oracle, model="oracle")
    monkeypatch.setattr("autointerp.stages.latent_stages.make_judge", lambda name, config, **_: judge)
    monkeypatch.setattr("autointerp.stages.open_run.load_tokenizer", lambda config, meta=None: _TokenNames())
    return judge


# ---------------------------------------------------------------- importing into a run


def test_nothing_matching_is_an_error_that_names_both_sides(tmp_path, tiny_cache):
    files = make_run(tmp_path, tiny_cache)
    source = write_neuronpedia(
        tmp_path / "np",
        [np_row("20-gemmascope-res-16k", i, "x") for i in range(100)]
        + [np_row("1-gemmascope-res-16k", 5000, "too far")],
    )
    with pytest.raises(ExplanationImportError) as err:
        import_explanations(files, RunConfig(sampling=SAMPLING), source)
    text = str(err.value)
    assert "layers.1" in text and "32 latents (0..31)" in text
    assert "20-gemmascope-res-16k: 100, latents 0..99" in text and "1 out of range" in text
    assert "--explanations-layer" in text
    report = json.loads((files.folder / "import_report.json").read_text())
    assert report["imported"] == [] and report["other_layers"]["20-gemmascope-res-16k"]["entries"] == 100
    assert [u["kind"] for u in report["unused"]] == ["out_of_range"]
    assert not list(read_jsonl(files.explanations))


def test_the_report_lists_every_entry_left_out_and_a_reimport_adds_nothing(tmp_path, tiny_cache):
    files = make_run(tmp_path, tiny_cache)
    good = scoreable_latents(tiny_cache)
    rare = next(i for i in range(tiny_cache.num_latents) if tiny_cache.state.fire_windows[i] < SAMPLING.min_examples)
    source = write_delphi(
        tmp_path / "delphi",
        {
            ("layers.1", good[0]): "first",
            ("layers.1", good[1]): "second",
            ("layers.1", rare): "never fires",
            ("layers.1", 40): "out of range",
            ("layers.1", 3): "",
            ("layers.0", good[0]): "another layer",
        },
    )
    outcome = import_explanations(files, RunConfig(sampling=SAMPLING), source)
    assert outcome.latents == sorted(good) and (outcome.new, outcome.replaced, outcome.unchanged) == (2, 0, 0)
    summary = outcome.summary()
    assert "1 out of range" in summary and "1 empty" in summary and "1 too rare to score" in summary
    assert "1 in other layers (layers.0: 1" in summary and "import_report.json" in summary
    report = json.loads((files.folder / "import_report.json").read_text())
    assert sorted((u["latent"], u["kind"]) for u in report["unused"]) == sorted(
        [(rare, "too_rare"), (40, "out_of_range"), (3, "empty")]
    )
    rows = {r["latent"]: r for r in read_jsonl(files.explanations)}
    assert rows[good[0]]["explainer_model"] == "imported:delphi:llama-70b" and rows[good[0]]["status"] == "ok"
    assert rows[good[0]]["fire_windows"] == tiny_cache.state.fire_windows[good[0]]
    assert rows[good[0]]["source"]["origin"].endswith(f"layers.1_latent{good[0]}.txt")

    again = import_explanations(files, RunConfig(sampling=SAMPLING), source)
    assert (again.new, again.replaced, again.unchanged) == (0, 0, 2)
    assert len(list(read_jsonl(files.explanations))) == 2


def test_score_without_a_cache_says_to_cache_first(tmp_path):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    source = write_eleuther(tmp_path / "layers.1_feature.json", {"1": "a"})
    with pytest.raises(ExplanationImportError, match="autointerp cache --out"):
        import_explanations(files, RunConfig(), source)


# ---------------------------------------------------------------- end to end, through the command line


def _score(run: RunFiles, source: Path, capsys, *extra: str) -> str:
    rc = main(
        ["score", "--out", str(run.folder), "--explanations", str(source), "--judge", "oracle", "--quiet", *extra]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_imported_explanations_are_scored_and_a_right_one_beats_a_wrong_one(tmp_path, tiny_cache, oracle_judge, capsys):
    files = make_run(tmp_path, tiny_cache)
    a, b = scoreable_latents(tiny_cache)
    right_a, wrong_a = firing_tokens(tiny_cache, a)
    right_b, _ = firing_tokens(tiny_cache, b)
    # a Neuronpedia export with the run's layer under its own name, another layer, and an empty entry
    source = write_neuronpedia(
        tmp_path / "np",
        [
            np_row("1-tiny-res", a, describe(right_a)),
            np_row("1-tiny-res", b, describe(right_b)),
            np_row("1-tiny-res", 7, ""),
            np_row("0-tiny-res", a, "another layer"),
        ],
    )
    out = _score(files, source, capsys)
    assert "imported 2 explanations" in out and "1 empty" in out and "1 in other layers (0-tiny-res: 1, latent " in out
    assert "2 latents" in out
    table = pd.read_parquet(files.results).set_index("latent")
    assert sorted(table.index) == sorted([a, b])  # only the imported latents were scored
    assert table.loc[a, "explainer_model"] == "imported:neuronpedia:gpt-4o-mini"
    right = table.loc[a, ["detection_balanced_accuracy", "fuzzing_balanced_accuracy"]]
    assert (right >= 0.75).all(), right
    # the shuffled-label control: with two labels, each latent is scored with the other's
    assert table.loc[a, "detection_control_latent"] == b and table.loc[b, "fuzzing_control_latent"] == a
    calls_first = len(oracle_judge.calls)

    # running the same import again asks the judge nothing and adds no row
    out = _score(files, source, capsys)
    assert "0 new, 0 replaced, 2 unchanged" in out
    assert len(oracle_judge.calls) == calls_first
    assert len(list(read_jsonl(files.explanations))) == 2 and len(list(read_jsonl(files.scores))) == 2 * 4

    # a delphi folder with a wrong explanation of latent a replaces its label; imported alone (as if scoring
    # were interrupted) the old scores already disappear from the results, since they belong to the old label
    wrong_source = write_delphi(tmp_path / "delphi", {("layers.1", a): describe(wrong_a[:8])})
    outcome = import_explanations(files, RunConfig(sampling=SAMPLING), wrong_source)
    assert (outcome.new, outcome.replaced, outcome.unchanged) == (0, 1, 0)
    report = json.loads((files.folder / "import_report.json").read_text())
    assert report["replaced"][0]["old_explanation"] == describe(right_a)
    stale = materialize(files, {}, ["detection", "fuzzing"]).set_index("latent")
    assert stale.loc[a, ["detection_balanced_accuracy", "fuzzing_auroc"]].isna().all()
    assert stale.loc[b, ["detection_balanced_accuracy", "fuzzing_auroc"]].notna().all()
    # scoring re-scores a, and only a
    out = _score(files, wrong_source, capsys)
    assert "0 new, 0 replaced, 1 unchanged" in out
    judgments = pd.read_parquet(files.judgments)
    own = judgments[~judgments["control"]]
    assert len(oracle_judge.calls) == calls_first + int((own["latent"] == a).sum())  # its control is kept
    assert "at least two" not in out  # one latent scored, but the folder has labels to lend (and a's is done)
    table = pd.read_parquet(files.results).set_index("latent")
    assert table.loc[a, "explanation"] == describe(wrong_a[:8])
    assert table.loc[a, "explainer_model"] == "imported:delphi:llama-70b"
    wrong = table.loc[a, ["detection_balanced_accuracy", "fuzzing_balanced_accuracy"]]
    assert (wrong.to_numpy() < right.to_numpy() - 0.25).all(), (right, wrong)
    assert table.loc[b, "detection_balanced_accuracy"] >= 0.8  # untouched
    # the superseded scores stay in the log, but results and judgments show only the current label's
    old = [r for r in read_jsonl(files.scores) if r["latent"] == a and r["explanation"] == describe(right_a)]
    assert len(old) == 2
    current = [r for r in read_jsonl(files.scores) if r["latent"] == a and r["explanation"] == describe(wrong_a[:8])]
    assert sum(len(r["judgments"]) for r in current) == int((own["latent"] == a).sum())


def test_cli_explanations_layer_and_format_options(tmp_path, tiny_cache, oracle_judge, capsys):
    files = make_run(tmp_path, tiny_cache)
    (a,) = scoreable_latents(tiny_cache, 1)
    right, _ = firing_tokens(tiny_cache, a)
    source = write_eleuther(tmp_path / "weird-name-7_feature.json", {str(a): describe(right)})
    rc = main(["score", "--out", str(files.folder), "--explanations", str(source), "--judge", "oracle", "--quiet"])
    assert rc == 2 and "weird-name-7" in capsys.readouterr().err
    out = _score(
        files,
        source,
        capsys,
        "--explanations-layer",
        "weird-name-7",
        "--explanations-format",
        "eleuther",
        "--scorers",
        "detection",
    )
    assert "imported 1 explanations" in out
    assert pd.read_parquet(files.results).set_index("latent").loc[a, "explainer_model"] == "imported:eleuther"
    rc = main(["score", "--out", str(files.folder), "--explanations-format", "delphi", "--judge", "oracle"])
    assert rc == 2 and "go with --explanations" in capsys.readouterr().err


def test_an_empty_export_says_so(tmp_path, tiny_cache):
    files = make_run(tmp_path, tiny_cache)
    source = write_neuronpedia(tmp_path / "np", [], batches=1)
    with pytest.raises(ExplanationImportError, match="holds no explanations"):
        import_explanations(files, RunConfig(sampling=SAMPLING), source)


def test_a_hand_written_log_without_hookpoints_is_the_runs(tmp_path, tiny_cache, oracle_judge, capsys):
    """Rows of our own format that name no hookpoint (a file written by hand) fit the run's hookpoint;
    a row that is not usable is listed as left out, never a traceback."""
    files = make_run(tmp_path, tiny_cache)
    (a,) = scoreable_latents(tiny_cache, 1)
    right, _ = firing_tokens(tiny_cache, a)
    b = (a + 1) % tiny_cache.num_latents
    source = write_our_log(
        tmp_path / "mine" / "explanations.jsonl",
        [{"latent": a, "explanation": describe(right)}, {"latent": b, "status": "failed"}],
    )
    _, entries = read_explanations(source)
    assert {(e.latent, e.layer) for e in entries} == {(a, None), (b, None)}
    out = _score(files, source, capsys, "--scorers", "detection")
    assert "imported 1 explanations" in out
    table = pd.read_parquet(files.results).set_index("latent")
    assert list(table.index) == [a] and table.loc[a, "hookpoint"] == tiny_cache.meta.hookpoint
    report = json.loads((files.folder / "import_report.json").read_text())
    assert [(u["latent"], u["kind"]) for u in report["unused"]] == [(b, "unreadable")]
