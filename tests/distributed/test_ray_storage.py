"""Ray runs whose machines share no folder: the run exchanged through `--ray-storage s3://bucket/...`, a
local S3 server (moto on 127.0.0.1) reached by the real s3fs from the driver and from the workers of a
real local Ray cluster. The workers read and write only their own copies (under $AUTOINTERP_CACHE) and
the bucket; the results are a plain run's, value for value, also when a cache shard fails and the run is
started again (the shards whose marker is in the bucket are not redone) and when a worker is killed
mid-shard; a shard's logs left on a machine by an attempt of an earlier pass are never taken as its own."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers.fault_server import FaultServer
from helpers.ray_cluster import WORKER_THREADS, start_cluster
from helpers.ray_judges import scripted_judges
from helpers.s3_server import s3_server
from test_ray import (  # noqa: F401 - a fixture
    STAGES,
    _cli,
    _copy,
    _deterministic_judge,
    _finished_once,
    _plain,
    _tables,
    kill_a_worker_mid_shard,
    template,
)
from test_ray_cache import _assert_same, _started, checkpoint, record_and_kill  # noqa: F401 - a fixture

import autointerp
from autointerp.config import save_config
from autointerp.distributed.caching import CACHE_SHARDS, RESOLVED, cache_on_ray
from autointerp.distributed.cluster import DistributedError
from autointerp.distributed.latents import RayOptions, run_latent_stages
from autointerp.distributed.storage import Storage, staging_root
from autointerp.results import RunFiles

# a Ray cluster takes seconds to start; this process's single passes run on a worker's threads
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("threads_of_a_worker")]

ray = pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server, and this machine's folder for the workers' copies (AUTOINTERP_CACHE)."""
    staging = tmp_path_factory.mktemp("staging")
    with s3_server() as env:
        yield {**env, "AUTOINTERP_CACHE": str(staging)}


@pytest.fixture(scope="module")
def cluster(s3):
    """The local cluster, its workers reaching the S3 server through their environment, as on a real cluster."""
    ray = start_cluster(s3)
    yield ray
    ray.shutdown()


def _staging(s3: dict[str, str], url: str) -> Path:
    """Where the workers keep their copies of the run exchanged through `url`."""
    os.environ["AUTOINTERP_CACHE"], before = s3["AUTOINTERP_CACHE"], os.environ.get("AUTOINTERP_CACHE")
    try:
        return staging_root(url)
    finally:
        if before is None:
            del os.environ["AUTOINTERP_CACHE"]
        else:
            os.environ["AUTOINTERP_CACHE"] = before


OPTIONS = {
    "n_tokens": 4096,
    "batch_rows": 2,
    "hookpoints": ["layers.1"],
    "n_train": 8,
    "n_test": 6,
    "n_negatives": 6,
    "n_train_negatives": 2,
    "min_examples": 10,
    "max_latents": 5,
    "judge": "scripted-judge",
    "explainer": "scripted-explainer",
}


def test_a_run_exchanged_through_s3_gives_the_results_of_a_plain_run(cluster, s3, checkpoint, tmp_path):  # noqa: F811
    url = "s3://bucket/run-a"
    options = {
        "model": str(checkpoint / "subject"),
        "dictionary": str(checkpoint / "saes"),
        "corpus": str(checkpoint / "corpus.txt"),
        **OPTIONS,
    }
    plain_run = autointerp.Run(tmp_path / "plain", echo=None, progress=False, **options)
    plain_run.cache()
    plain = RunFiles(tmp_path / "plain")
    _plain(plain, plain_run.config)
    files = RunFiles(tmp_path / "ray")
    files.prepare()
    config = autointerp.Run(files.folder, echo=None, progress=False, **options).config
    storage = Storage(url)
    # cache shard 1 fails for good: shards 0 and 2 are done in the bucket only (the driver never fetched them)
    log = tmp_path / "log"
    log.mkdir()
    fail = RayOptions(
        shards=3,
        max_retries=0,
        storage=url,
        before_cache_shard=functools.partial(record_and_kill, str(log), "always"),
    )
    with pytest.raises(DistributedError, match="cache-1"):
        cache_on_ray(files, config, fail, progress=False)
    uploaded = storage.listing(CACHE_SHARDS)
    assert f"0/{RESOLVED}" in uploaded and f"2/{RESOLVED}" in uploaded and f"1/{RESOLVED}" not in uploaded
    assert not (files.folder / CACHE_SHARDS / "0").exists()
    # started again: only shard 1 runs; the driver fetches the three and merges them
    (log / "started").unlink()
    again = RayOptions(shards=2, storage=url, before_cache_shard=functools.partial(record_and_kill, str(log), "never"))
    resolved = cache_on_ray(files, config, again, progress=False)
    assert _started(log) == [1]
    _assert_same(files.cache, plain.cache)
    assert storage.listing(CACHE_SHARDS) == {}
    save_config(files.config, config, resolved)
    # explain and score: the workers read their copy of what the driver uploaded
    summary = run_latent_stages(
        files, config, STAGES, RayOptions(judges=scripted_judges, shards=3, storage=url), progress=False
    )
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(files, config)
    assert len(want_results) == summary.latents >= 4 and want_results["detection_control_latent"].notna().any()
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    _finished_once(files)
    copy = _staging(s3, url) / "run"
    assert (copy / "cache" / "meta.json").read_bytes() == (files.cache / "meta.json").read_bytes()
    assert (copy / "explanations.jsonl").exists() and not any((copy / "shards").iterdir())
    left = storage.listing("")
    assert not [name for name in left if name.startswith(("shards/", CACHE_SHARDS))], left
    assert json.loads(files.config.read_text())["resolved"] == resolved  # the driver's own, untouched


def test_a_worker_killed_mid_shard_with_storage_loses_and_duplicates_nothing(cluster, s3, template, tmp_path):  # noqa: F811
    url = "s3://bucket/run-b"
    plain, config = _copy(template, tmp_path, "plain")
    _plain(plain, config)
    spread, _ = _copy(template, tmp_path, "ray")
    pids = tmp_path / "pids"
    pids.mkdir()
    killer, killed = kill_a_worker_mid_shard(_staging(s3, url) / "run" / "shards", pids)
    factory = functools.partial(scripted_judges, delay=0.05, pids=str(pids))
    summary = run_latent_stages(
        spread, config, STAGES, RayOptions(judges=factory, shards=2, storage=url), progress=False
    )
    killer.join()
    assert killed, "no worker was killed: the run ended first"
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    _finished_once(spread)
    assert summary.failed == 0


def test_a_shard_redoes_what_an_attempt_of_an_earlier_pass_left_on_its_machine(s3, template, tmp_path, monkeypatch):  # noqa: F811
    """Run in this process (no cluster): logs a dead attempt left in this machine's copy belong to their
    pass; a later pass's shard of the same name starts afresh (else they would be merged twice). A retry
    of a shard whose logs were all uploaded only answers what it did."""
    from autointerp.cache.store import HookpointCaches
    from autointerp.distributed.latents import _publish, run_shard
    from autointerp.distributed.shards import SHARDS
    from autointerp.pipeline import select_units

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "staging"))
    url = "s3://bucket/run-c"
    files, config = _copy(template, tmp_path, "ray")
    units = select_units(HookpointCaches(files.cache), config)[0][:3]
    storage = Storage(url)
    _publish(storage, files)
    name = "latents-00000"

    def shard(pass_id: str) -> dict:
        return run_shard(str(files.folder), name, config, units, {"explain"}, scripted_judges, None, url, pass_id)

    first = shard("old")
    assert first["explained"] == 3
    left = staging_root(url) / "run" / SHARDS / name  # as if the attempt died before its upload ended
    storage.get_folder(f"{SHARDS}/{name}", left)
    (left / ".pass").write_text("old")
    storage.remove(SHARDS)
    second = shard("new")
    assert second["explained"] == 3
    logged = storage.listing(f"{SHARDS}/{name}")
    rows = tmp_path / "rows.jsonl"
    storage.get_file(f"{SHARDS}/{name}/explanations.jsonl", rows)
    assert len(rows.read_text().splitlines()) == 3 and "done.json" in logged
    assert shard("new") == second  # all uploaded: answered from done.json, nothing asked again


def test_the_cli_runs_through_ray_storage_with_the_results_of_a_plain_run(s3, tmp_path):  # noqa: F811
    """`autointerp run --ray --ray-storage s3://...` in its own process (its own local Ray instance, whose
    workers inherit the S3 environment) against an HTTP judge: the results equal those of the same command
    without Ray, and the bucket keeps only the mirrored run, no shard."""
    url = "s3://bucket/run-cli"
    # the plain run's forward passes on as many threads as each Ray worker's (one CPU each): only then are the
    # two caches equal value for value on every machine (meta.json records the count)
    env = {**os.environ, **s3, "OPENAI_API_KEY": "sk-test", "OMP_NUM_THREADS": str(WORKER_THREADS)}
    with FaultServer(_deterministic_judge) as judge:
        args = _cli(tmp_path / "ray", judge.url, tmp_path / "responses.sqlite")
        done = subprocess.run([*args, "--ray-storage", url], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        plain_args = [a for a in _cli(tmp_path / "plain", judge.url, tmp_path / "plain.sqlite") if a != "--ray"]
        plain = subprocess.run(plain_args, env=env, capture_output=True, text=True, timeout=600)
        assert plain.returncode == 0, plain.stderr[-3000:]
    threads = [json.loads((tmp_path / run / "cache" / "meta.json").read_text())["threads"] for run in ("ray", "plain")]
    assert threads == [WORKER_THREADS, WORKER_THREADS]
    got = pd.read_parquet(tmp_path / "ray" / "results.parquet").sort_values("latent").reset_index(drop=True)
    want = pd.read_parquet(tmp_path / "plain" / "results.parquet").sort_values("latent").reset_index(drop=True)
    assert len(got) == 4 and (got["status"] == "ok").all()
    usage = [c for c in got if c.endswith("_tokens")]  # the fake server's cached-token counts follow its history
    pd.testing.assert_frame_equal(got.drop(columns=usage), want.drop(columns=usage))
    left = Storage(url).listing("")
    assert "run/manifest.json" in left
    assert not [name for name in left if name.startswith(("shards/", CACHE_SHARDS))], left
