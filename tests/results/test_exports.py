"""`autointerp export`: a run as Neuronpedia's upload-batch bodies and bulk-import explanation rows, and
as SAEBench autointerp results; what we write, our own importer reads back equal."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.report_fixtures import make_run
from helpers.tiny_subjects import make_tiny_llama

from autointerp.cache.store import HookpointCaches
from autointerp.cli import main
from autointerp.config import load_config
from autointerp.explanation_sources import read_explanations
from autointerp.exports import neuronpedia
from autointerp.exports.neuronpedia import NeuronpediaOptions, export_neuronpedia
from autointerp.exports.saebench import export_saebench
from autointerp.importing import import_explanations
from autointerp.results import RunFiles


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export") / "run", make_tiny_llama(), max_latents=6)


def _labels(folder: Path) -> dict[tuple[str, int], str]:
    return {
        (u.hookpoint, u.index): r.explanation
        for u, r in RunFiles(folder).explanations_by_unit().items()
        if r.status == "ok" and r.explanation
    }


def _empty_copy(run: Path, dest: Path) -> RunFiles:
    """The same run (config and cache) with no explanations or scores: where an export is imported."""
    dest.mkdir()
    shutil.copy(run / "config.json", dest / "config.json")
    shutil.copytree(run / "cache", dest / "cache")
    files = RunFiles(dest)
    files.prepare()
    return files


def _reimported(run: Path, export: Path, tmp_path: Path, fmt: str) -> dict[tuple[str, int], str]:
    files = _empty_copy(run, tmp_path / f"reimport-{fmt}")
    config, _ = load_config(files.config)
    outcome = import_explanations(files, config, export, fmt=fmt)
    assert outcome.format == fmt and not outcome.left_out, outcome.summary()
    return _labels(files.folder)


def test_neuronpedia_upload_batches_hold_the_runs_activations_and_labels(run, tmp_path, monkeypatch):
    monkeypatch.setattr(neuronpedia, "BATCH_FEATURES", 4)  # a small run still spans several batches
    out = tmp_path / "np"
    done = export_neuronpedia(run, out, NeuronpediaOptions(model_id="Tiny-Llama", method_name="np_acts"))
    labels = _labels(run)
    assert done.features == len(labels) == done.explanations and len(done.batches) == -(-len(labels) // 4)
    caches = HookpointCaches(run / "cache")
    (hookpoint,) = caches
    cache = caches.open(hookpoint)
    seen = {}
    for path in done.batches:
        body = json.loads(path.read_text())
        assert body["modelId"] == "tiny-llama" and body["source"] == "1-res-autointerp"
        assert 1 <= len(body["features"]) <= 4
        for f in body["features"]:
            seen[f["index"]] = f
            assert f["density"] == pytest.approx(cache.stats(f["index"]).frequency) and 0 < f["density"] <= 1
            (e,) = f["explanations"]
            assert e == {
                "text": labels[(hookpoint, f["index"])],
                "methodName": "np_acts",
                "modelName": "scripted-explainer",
            }
            top, top_values = cache.top_windows(f["index"])
            first = f["activations"][0]
            assert max(first["values"]) == pytest.approx(float(top_values[0]), abs=1e-3)  # strongest first
            binned = [a for a in f["activations"] if "quantileMin" in a]
            assert binned, "the quantile examples carry their bin's bounds"
            for a in f["activations"]:
                assert len(a["tokens"]) == len(a["values"]) == cache.meta.window_len
                assert all(isinstance(t, str) for t in a["tokens"]) and max(a["values"]) > 0
            for a in binned:
                assert a["quantileMin"] - 1e-3 <= max(a["values"]) <= a["quantileMax"] + 1e-3
                assert 0 < a["quantileFraction"] <= 1
            lows = [a["quantileMin"] for a in binned]
            assert lows == sorted(lows), "bins run from the weakest to the strongest"
    assert set(seen) == {i for _, i in labels}
    # the activation values are the cache's own, token for token
    some = seen[min(seen)]
    windows, _ = cache.top_windows(min(seen))
    expected = cache.window_activations(int(windows[0]), min(seen))
    assert np.allclose(some["activations"][0]["values"], expected, atol=1e-3)


def test_neuronpedia_explanation_rows_reimport_equal(run, tmp_path):
    out = tmp_path / "np"
    done = export_neuronpedia(run, out)
    (path,) = done.explanation_files
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:  # the columns of Neuronpedia's Explanation table, nothing else
        assert set(r) == {
            "id",
            "modelId",
            "layer",
            "index",
            "description",
            "authorId",
            "typeName",
            "explanationModelName",
            "scoreV1",
            "createdAt",
            "updatedAt",
        }
        assert isinstance(r["index"], str) and r["layer"] == "1-res-autointerp"
    assert len({r["id"] for r in rows}) == len(rows)
    assert _reimported(run, out, tmp_path, "neuronpedia") == _labels(run)
    # a second export into the same folder replaces the first: same rows, same ids
    again = export_neuronpedia(run, out)
    with gzip.open(again.explanation_files[0], "rt") as f:
        assert [json.loads(line)["id"] for line in f] == [r["id"] for r in rows]


def test_neuronpedia_leaves_out_what_the_upload_refuses(run, tmp_path):
    """An explanation over the route's 512 characters is left out, said so, and the latent keeps its activations."""
    files = RunFiles(run)
    copy = _empty_copy(run, tmp_path / "long")
    shutil.copy(files.explanations, copy.explanations)
    rows = list(copy.explanation_rows())
    victim = next(r for r in rows if r.status == "ok")
    from autointerp.results import append_row

    append_row(copy.explanations, type(victim)(**{**victim.__dict__, "explanation": "x" * 513}))
    done = export_neuronpedia(copy.folder, tmp_path / "np")
    assert [u.index for u in done.too_long] == [victim.latent] and "longer than 512" in done.describe()
    features = {f["index"]: f for p in done.batches for f in json.loads(p.read_text())["features"]}
    assert features[victim.latent]["explanations"] == [] and features[victim.latent]["activations"]


def test_saebench_results_reimport_equal_with_detection_accuracy(run, tmp_path):
    out = tmp_path / "sb"
    done = export_saebench(run, out)
    (path,) = done.files
    data = json.loads(path.read_text())
    assert path.name.endswith("_eval_results.json") and data["eval_type_id"] == "autointerp"
    assert done.scorer == "detection" and data["sae_cfg_dict"]["hook_name"] == "layers.1"
    files = RunFiles(run)
    scores = files.current_scores(files.explanations_by_unit())
    per_latent = data["eval_result_unstructured"]
    values = []
    for key, entry in per_latent.items():
        row = next(r for (u, s), r in scores.items() if s == "detection" and u.index == int(key))
        assert entry["score"] == pytest.approx(row.metrics["accuracy"])
        truth = [j.activating for j in row.judgments if j.prediction is not None]
        pred = [j.prediction for j in row.judgments if j.prediction is not None]
        assert entry["correct seqs"] == [i for i, t in enumerate(truth, 1) if t]
        assert entry["predictions"] == [i for i, p in enumerate(pred, 1) if p]
        values.append(entry["score"])
    assert data["eval_result_metrics"]["autointerp"]["autointerp_score"] == pytest.approx(np.mean(values))
    fmt, entries = read_explanations(out)
    assert fmt == "saebench" and {(e.layer, e.latent): e.text for e in entries} == _labels(run)
    assert _reimported(run, out, tmp_path, "saebench") == _labels(run)


def test_export_command(run, tmp_path, capsys):
    assert (
        main(["export", str(run), str(tmp_path / "np"), "--format", "neuronpedia", "--source", "layers.1=1-res-jb"])
        == 0
    )
    assert "1-res-jb" in capsys.readouterr().out
    body = json.loads((tmp_path / "np" / "upload-batch" / "batch-0.json").read_text())
    assert body["source"] == "1-res-jb"
    assert main(["export", str(run), str(tmp_path / "sb"), "--format", "saebench"]) == 0
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x"), "--format", "saebench"]) == 2


# ---------------------------------------------------------------- Neuronpedia's own upload helper


class UploadRoute:
    """A local stand-in for Neuronpedia's `POST /api/feature/upload-batch`: it checks a body as the route's
    schema does (1..128 features of unique index, density in [0, 1], explanation text 1..512 characters,
    activations of 1..1024 tokens with one value per token, quantileFraction in [0, 1]) and keeps it."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[dict] = []
        self.problems: list[str] = []
        route = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/api/feature/upload-batch" or not self.headers.get("X-Api-Key"):
                    route.problems.append(f"{self.path} without a key")
                route.problems += route.check(body)
                route.bodies.append(body)
                answer = json.dumps({"message": f"{len(body['features'])} features created."}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @staticmethod
    def check(body: dict) -> list[str]:
        out = []
        features = body["features"]
        if not 1 <= len(features) <= 128 or len({f["index"] for f in features}) != len(features):
            out.append("features: 1..128 of unique index")
        for f in features:
            if f.get("density") is not None and not 0 <= f["density"] <= 1:
                out.append(f"{f['index']}: density")
            if any(not 1 <= len(e["text"]) <= 512 for e in f.get("explanations") or []):
                out.append(f"{f['index']}: explanation text")
            if not f["activations"]:
                out.append(f"{f['index']}: no activations")
            for a in f["activations"]:
                if not 1 <= len(a["tokens"]) <= 1024 or len(a["tokens"]) != len(a["values"]):
                    out.append(f"{f['index']}: tokens/values")
                if a.get("quantileFraction") is not None and not 0 <= a["quantileFraction"] <= 1:
                    out.append(f"{f['index']}: quantileFraction")
        return out

    def __enter__(self):
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _without_nones(value):
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def test_the_neuronpedia_packages_upload_helper_sends_our_batches_as_they_are(run, tmp_path, monkeypatch):
    """Our batches, read into the `neuronpedia` package's own Feature objects and sent by its
    `FeatureRequest.upload_batch`, reach the route as the very bodies we wrote."""
    pytest.importorskip("neuronpedia", reason="pip install -e '.[test]' (neuronpedia)")
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature
    from neuronpedia.requests.base_request import NPRequest
    from neuronpedia.requests.feature_request import FeatureRequest

    monkeypatch.setattr(neuronpedia, "BATCH_FEATURES", 4)
    done = export_neuronpedia(run, tmp_path / "np", NeuronpediaOptions(method_name="np_acts"))
    route = UploadRoute()
    with route as url:
        monkeypatch.setattr(NPRequest, "BASE_URL", url)
        sent = []
        for path in done.batches:
            body = json.loads(path.read_text())
            model, source = body["modelId"], body["source"]
            features = [
                Feature(
                    modelId=model,
                    source=source,
                    index=f["index"],
                    density=f["density"],
                    explanations=[
                        Explanation(model, source, f["index"], e["text"], e.get("methodName"), e.get("modelName"))
                        for e in f["explanations"]
                    ],
                    activations=[
                        Activation(
                            model,
                            source,
                            f["index"],
                            a["tokens"],
                            a["values"],
                            a.get("quantileMax"),
                            a.get("quantileMin"),
                            a.get("quantileFraction"),
                        )
                        for a in f["activations"]
                    ],
                )
                for f in body["features"]
            ]
            FeatureRequest(api_key="np-test-key").upload_batch(model, source, features)
            sent.append(body)
    # the route got every batch, unchanged but for the fields the helper always writes (null there)
    assert not route.problems
    assert [_without_nones(b) for b in route.bodies] == sent and len(sent) > 1
