"""The embedding scorer, hard negatives and the contrastive explainer wired into the run: options,
config, results.parquet columns, and `autointerp score --scorers detection,fuzzing,embedding`."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from helpers.fake_embedder import fake_embedder
from helpers.tiny_subjects import build_tiny_cache, decode_ids

from autointerp.cli import build_parser, config_from_args
from autointerp.config import ConfigError, RunConfig
from autointerp.llm.scripted import ScriptedJudge
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents
from autointerp.results import RunFiles, materialize, read_jsonl, usage_by_model
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import DetectionScorer, EmbeddingScorer, FuzzingScorer, scorer_metrics
from autointerp.scorers.registry import check_config
from autointerp.stages.open_run import make_scorers

SAMPLING = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)


def _some_latents(cache, n):
    """Latents that fire often enough and are silent in enough windows (the tiny SAE has latents that fire
    on every token: no negatives, so no AUROC and no contrastive label for them)."""
    fire = cache.state.fire_windows
    return [i for i in range(cache.num_latents) if 10 <= fire[i] <= cache.meta.n_windows - 80][:n]


def test_options_reach_the_config():
    args = build_parser().parse_args(
        [
            "run",
            "--out",
            "x",
            "--scorers",
            "detection,fuzzing,embedding",
            "--embedding-model",
            "/models/e5",
            "--negatives",
            "similar",
            "--similar-model",
            "/models/mini",
            "--n-train-negatives",
            "7",
            "--explainer-style",
            "contrastive",
        ]
    )
    config, explicit = config_from_args(args)
    assert (
        config.scorers == ["detection", "fuzzing", "embedding"] and config.scoring["embedding"]["model"] == "/models/e5"
    )
    assert config.sampling.negatives == "similar" and config.sampling.similar_model == "/models/mini"
    assert config.sampling.n_train_negatives == 7 and config.explain.style == "contrastive"
    assert {"sampling.negatives", "explain.style", "scoring.embedding.model"} <= explicit
    check_config(config)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--out", "x", "--negatives", "hardest"])


def test_contrastive_without_silent_examples_is_refused():
    config = RunConfig()
    config.explain.style = "contrastive"
    config.sampling.n_train_negatives = 0
    with pytest.raises(ConfigError, match="--n-train-negatives"):
        config.validate()


def test_make_scorers_builds_the_embedding_scorer_on_the_shared_embedder():
    emb = fake_embedder()
    asked = []
    scorers = make_scorers(
        RunConfig(scorers=["detection", "fuzzing", "embedding"], scoring={"embedding": {"model": "m"}}),
        embedder=lambda name: asked.append(name) or emb,
    )
    assert [type(s) for s in scorers] == [DetectionScorer, FuzzingScorer, EmbeddingScorer]
    assert asked == ["m"] and scorers[2].embedder is emb


def test_embedding_runs_with_no_judge_and_fills_its_columns(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = RunConfig(sampling=SAMPLING, latents=_some_latents(tiny_cache, 3), scorers=["detection", "embedding"])
    latents, _ = select_latents(tiny_cache, config)
    sampler = Sampler(tiny_cache, decode_ids, SAMPLING)
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 t2 t3", model="ex")
    worker = LatentWorker(files, config, sampler, explainer, None, [], {"explain"}, RunSummary())
    asyncio.run(process_latents(latents, worker, progress=False))
    emb = fake_embedder()
    worker = LatentWorker(files, config, sampler, None, None, [EmbeddingScorer(emb)], {"score"}, RunSummary())
    summary = asyncio.run(process_latents(latents, worker, progress=False))
    assert summary.scored == len(latents) and summary.failed == 0

    table = materialize(files, {"model": "tiny"}, config.scorers)
    for metric in scorer_metrics("embedding"):
        assert f"embedding_{metric}" in table
    assert table["embedding_auroc"].between(0, 1).all()
    assert (table["embedding_judge_model"] == emb.name).all()
    assert (table["embedding_n"] == SAMPLING.n_test + SAMPLING.n_negatives).all()
    assert table["detection_auroc"].isna().all()  # not run: columns there, empty
    assert set(usage_by_model(files)) == {"ex"}  # the embedding model spent no judge tokens
    judgments = pd.read_parquet(files.judgments)
    assert len(judgments) == len(latents) * (SAMPLING.n_test + SAMPLING.n_negatives)
    train = {r["latent"]: set(r["train_windows"]) for r in read_jsonl(files.explanations)}
    for latent, group in judgments.groupby("latent"):
        assert not train[latent] & set(group["window"])


@pytest.mark.slow
def test_score_command_with_embedding_and_similar_negatives(tmp_path, tiny_llama, capsys):
    """`autointerp score --scorers detection,fuzzing,embedding` on a folder explained with hard negatives:
    the real SmolLM2 judge, the real MiniLM for both the negatives and the scorer."""
    from autointerp.cli import main
    from autointerp.config import save_config
    from autointerp.embeddings import load_embedder

    run = tmp_path / "run"
    cache = build_tiny_cache(run, tiny_llama)  # writes run/cache
    files = RunFiles(run)
    files.prepare()
    sampling = SamplingSettings(**{**SAMPLING.__dict__, "negatives": "similar", "similar_pool": 100})
    config = RunConfig(sampling=sampling, latents=_some_latents(cache, 2))
    config.explain.style = "contrastive"
    save_config(files.config, config, {"model": "tiny", "dictionary": "tiny-sae", "hookpoint": "layers.1"})
    latents, _ = select_latents(cache, config)
    sampler = Sampler(cache, decode_ids, sampling, embedder=load_embedder("default"))
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 t2 t3", model="ex")
    worker = LatentWorker(files, config, sampler, explainer, None, [], {"explain"}, RunSummary())
    asyncio.run(process_latents(latents, worker, progress=False))

    rc = main(
        [
            "score",
            "--out",
            str(run),
            "--judge",
            "smollm2",
            "--scorers",
            "detection,fuzzing,embedding",
            "--quiet",
            "--response-cache",
            str(tmp_path / "responses.sqlite"),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "embedding: mean auroc" in out.out
    table = pd.read_parquet(files.results)
    assert len(table) == 2 and (table["status"] == "ok").all()
    for scorer in ("detection", "fuzzing", "embedding"):
        assert table[f"{scorer}_auroc"].between(0, 1).all(), scorer
    assert (table["embedding_judge_model"] == "sentence-transformers/all-MiniLM-L6-v2").all()
    assert table["detection_judge_model"].str.contains("SmolLM2").all()
    # the score stage rebuilt the same hard-negative split the explainer saw: nothing shown was scored
    judgments = pd.read_parquet(files.judgments)
    train = {r["latent"]: set(r["train_windows"]) for r in read_jsonl(files.explanations)}
    assert all(len(train[latent]) == SAMPLING.n_train + SAMPLING.n_train_negatives for latent in train)
    for latent, group in judgments.groupby("latent"):
        assert not train[latent] & set(group["window"])


def test_embedding_can_choose_among_best_of_n_labels_without_a_judge(tmp_path, tiny_cache):
    files = RunFiles(tmp_path / "run")
    files.prepare()
    config = RunConfig(sampling=SAMPLING, latents=_some_latents(tiny_cache, 2))
    config.explain.best_of = 3
    config.explain.phrase_check = False  # one explainer call per candidate (the check's are in test_label_check)
    labels = iter(f"[EXPLANATION]: tokens t{i} t{i + 1}" for i in range(100))
    explainer = ScriptedJudge(lambda m: next(labels), model="ex")
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, SAMPLING),
        explainer,
        None,
        [],
        {"explain"},
        RunSummary(),
        chooser=EmbeddingScorer(fake_embedder()),
    )
    summary = asyncio.run(process_latents(config.latents, worker, progress=False))
    assert summary.explained == 2 and summary.failed == 0
    for row in read_jsonl(files.explanations):
        assert row["chosen_by"] == "embedding" and len(row["candidates"]) == 3
        assert all(c["metric"] == "auroc" and c["usage"]["calls"] == 1 for c in row["candidates"])
