"""`score --explanations ORG/NAME[@REV][/PATH]`: published explanations fetched from a fake Hub on 127.0.0.1
(never the real one): only the files of the run's hookpoints, pinned to a commit that the import records."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from helpers import fake_hub
from test_explanation_sources import (  # noqa: F401 - oracle_judge is a fixture
    describe,
    firing_tokens,
    make_run,
    oracle_judge,
    scoreable_latents,
)

from autointerp.cli import main
from autointerp.explanation_hub import HubExplanationsError, choose_files
from autointerp.results import read_jsonl

hub = fake_hub.hub  # the fake Hub fixture

REPO = "EleutherAI/auto_interp_explanations"


def _json(data: dict) -> bytes:
    return json.dumps(data).encode()


def _score(folder, spec: str, capsys, *extra: str) -> tuple[int, str, str]:
    rc = main(["score", "--out", str(folder), "--explanations", spec, "--judge", "oracle", "--quiet", *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eleuthers_layout_downloads_only_the_runs_layer_pinned(tmp_path, tiny_cache, oracle_judge, hub, capsys):  # noqa: F811
    files = make_run(tmp_path, tiny_cache)
    a, b = scoreable_latents(tiny_cache)
    right_a, _ = firing_tokens(tiny_cache, a)
    _, wrong_b = firing_tokens(tiny_cache, b)
    layer1 = {str(a): describe(right_a), str(b): describe(wrong_b[:8])}
    first = hub.add_files(
        REPO,
        {
            "Gemma/131k/res/model.layers.0_feature.json": _json({str(a): "layer zero"}),
            "Gemma/131k/res/model.layers.1_feature.json": _json(layer1),
            "Gemma/131k/res/model.layers.2_feature.json": _json({str(a): "layer two"}),
            "Llama/131k/res/model.layers.1_feature.json": _json({str(a): "another model"}),
            "README.md": b"# explanations\n",
        },
        repo_type="dataset",
    )
    # two folders hold layer 1: the user is asked to name one, and nothing is downloaded
    rc, _, err = _score(files.folder, REPO, capsys)
    assert rc == 2 and "Gemma/131k/res" in err and "Llama/131k/res" in err and not hub.downloads()

    rc, out, err = _score(files.folder, f"{REPO}/Gemma/131k/res", capsys)
    assert rc == 0, err
    assert hub.downloads() == ["Gemma/131k/res/model.layers.1_feature.json"]
    assert f"{REPO}@{first}/Gemma/131k/res" in out and "imported 2 explanations" in out
    rows = {r["latent"]: r for r in read_jsonl(files.explanations)}
    assert rows[a]["source"]["file"] == f"{REPO}@{first}/Gemma/131k/res" and rows[a]["explanation"] == describe(right_a)
    table = pd.read_parquet(files.results).set_index("latent")
    assert table.loc[a, "detection_balanced_accuracy"] > table.loc[b, "detection_balanced_accuracy"]
    report = json.loads((files.folder / "import_report.json").read_text())
    assert report["source"] == f"{REPO}@{first}/Gemma/131k/res"

    # main moves on; the commit named still gives what it held
    second = hub.add_files(
        REPO, {"Gemma/131k/res/model.layers.1_feature.json": _json({str(a): "changed"})}, repo_type="dataset"
    )
    assert second != first
    rc, out, err = _score(files.folder, f"{REPO}@{first}/Gemma/131k/res", capsys, "--scorers", "detection")
    assert rc == 0, err
    assert "0 new, 0 replaced" in out, out
    assert {r["explanation"] for r in read_jsonl(files.explanations)} == set(layer1.values())
    rc, out, err = _score(files.folder, f"{REPO}/Gemma/131k/res", capsys, "--scorers", "detection")
    assert rc == 0 and f"@{second}/" in out and "1 replaced" in out


def test_our_published_dataset_by_hub_id(tmp_path, tiny_cache, oracle_judge, hub, capsys):  # noqa: F811
    files = make_run(tmp_path, tiny_cache)
    (a,) = scoreable_latents(tiny_cache, 1)
    right, _ = firing_tokens(tiny_cache, a)
    table = pd.DataFrame(
        [
            {
                "latent": a,
                "hookpoint": "layers.1",
                "status": "ok",
                "explanation": describe(right),
                "explainer_model": "m",
            },
            {"latent": a, "hookpoint": "layers.5", "status": "ok", "explanation": "elsewhere", "explainer_model": "m"},
        ]
    )
    buffer = io.BytesIO()
    table.to_parquet(buffer)
    sha = hub.add_files(
        "alice/labels", {"data/results.parquet": buffer.getvalue(), "README.md": b"card"}, repo_type="dataset"
    )
    rc, out, err = _score(files.folder, "alice/labels", capsys, "--scorers", "detection")
    assert rc == 0, err
    assert hub.downloads() == ["data/results.parquet"] and f"alice/labels@{sha}" in out
    (row,) = [r for r in read_jsonl(files.explanations)]
    assert row["explanation"] == describe(right) and row["explainer_model"] == "imported:autointerp:m"


def test_an_unknown_repo_or_layer_is_one_line(tmp_path, tiny_cache, oracle_judge, hub, capsys):  # noqa: F811
    files = make_run(tmp_path, tiny_cache)
    rc, _, err = _score(files.folder, "nobody/nothing", capsys)
    assert rc == 2 and "no dataset or model repo" in err
    hub.add_files("bob/np", {"Gemma/res/model.layers.7_feature.json": _json({"1": "x"})}, repo_type="dataset")
    rc, _, err = _score(files.folder, "bob/np", capsys)
    assert rc == 2 and "no explanation file for the run's hookpoints" in err and "layers.7" in err


def test_neuronpedia_batches_are_chosen_by_source_folder():
    listing = [
        "v1/gemma-2-2b/1-gemmascope-res-16k/explanations/batch-0.jsonl.gz",
        "v1/gemma-2-2b/1-gemmascope-res-16k/explanations/batch-1.jsonl.gz",
        "v1/gemma-2-2b/2-gemmascope-res-16k/explanations/batch-0.jsonl.gz",
        "v1/gemma-2-2b/1-gemmascope-mlp-16k/explanations/batch-0.jsonl.gz",
    ]
    assert choose_files(listing, ["model.layers.1"], "", "x") == listing[:2]
    assert choose_files(listing, ["layers.1.mlp"], "", "x") == listing[3:]
    with pytest.raises(HubExplanationsError, match="no file"):
        choose_files(listing, ["layers.1"], "v2", "x")
