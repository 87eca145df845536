"""Caching on a real local Ray cluster (127.0.0.1, 2 worker CPUs): shards of the corpus rows of the tiny
3-block checkpoint, merged, give the cache a single pass writes, value for value (files, top windows,
samples, counts); a worker killed as its shard starts is retried; a run stopped by a shard that failed
for good resumes without redoing the shards that finished."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from helpers.checkpoint_fixtures import write_corpus, write_sae_run, write_subject

import autointerp
from autointerp.cache.store import FILES, INDEX, LatentState, hookpoint_folders
from autointerp.cli import main
from autointerp.distributed.caching import CACHE_SHARDS, RESOLVED, cache_on_ray, plan_shards
from autointerp.distributed.cluster import DistributedError
from autointerp.distributed.latents import RayOptions
from autointerp.results import RunFiles

# a Ray cluster takes seconds to start; this process's single passes run on a worker's threads
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("threads_of_a_worker")]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoint")
    write_subject(root / "subject")
    write_sae_run(root / "saes")
    write_corpus(root / "corpus.txt")
    return root


def _options(root: Path) -> dict:
    # 16 rows of 256 tokens in batches of 2: shards of whole batches
    return {
        "model": str(root / "subject"),
        "dictionary": str(root / "saes"),
        "corpus": str(root / "corpus.txt"),
        "n_tokens": 4096,
        "batch_rows": 2,
    }


def _argv(options: dict) -> list[str]:
    return [arg for name, value in options.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


def _contents(cache: Path) -> dict[str, object]:
    """Every file of a cache folder, state.npz as its arrays."""
    out: dict[str, object] = {}
    folders = hookpoint_folders(cache)
    assert folders is not None
    if (cache / INDEX).exists():
        out[INDEX] = (cache / INDEX).read_text()
    for hookpoint, folder in folders.items():
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted([*FILES, "meta.json", "state.npz"])
        for name in (*FILES, "meta.json"):
            out[f"{hookpoint}/{name}"] = (folder / name).read_bytes()
        state = LatentState.load(folder / "state.npz")
        for field, value in vars(state).items():
            out[f"{hookpoint}/state.{field}"] = value.tolist()
    return out


def _assert_same(got: Path, want: Path) -> None:
    a, b = _contents(got), _contents(want)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key


def _resolved(folder: Path) -> dict:
    return json.loads(RunFiles(folder).config.read_text())["resolved"]


def test_shards_are_whole_batches_in_order():
    assert plan_shards(16, 2, 3) == [(0, 6), (6, 6), (12, 4)]
    assert plan_shards(17, 4, 2) == [(0, 12), (12, 5)]
    assert plan_shards(3, 8, 4) == [(0, 3)]
    assert plan_shards(8, 2, 8) == [(0, 2), (2, 2), (4, 2), (6, 2)]


def test_a_ray_cache_equals_the_single_pass_cache(cluster, checkpoint, tmp_path):
    options = {**_options(checkpoint), "hookpoints": "all"}
    assert main(["cache", "--out", str(tmp_path / "plain"), *_argv(options), "--quiet"]) == 0
    assert main(["cache", "--out", str(tmp_path / "ray"), *_argv(options), "--ray", "--quiet"]) == 0
    plain, spread = RunFiles(tmp_path / "plain"), RunFiles(tmp_path / "ray")
    assert list(hookpoint_folders(spread.cache) or {}) == ["layers.0", "layers.1", "layers.2"]
    state = LatentState.load(spread.cache / "layers.1" / "state.npz")
    assert (state.top_win.max() >= 6 * 8) and (state.sample_win.max() >= 6 * 8)  # windows past the first shard
    _assert_same(spread.cache, plain.cache)
    assert _resolved(spread.folder) == _resolved(plain.folder)
    # the shards' data is gone once merged; running again finds the cache done
    assert not any(p.is_dir() for p in (spread.folder / CACHE_SHARDS).iterdir())
    assert main(["cache", "--out", str(tmp_path / "ray"), *_argv(options), "--ray", "--quiet"]) == 0
    _assert_same(spread.cache, plain.cache)


def record_and_kill(log: str, kill: str, index: int, folder: Path) -> None:
    """Runs in the worker as a cache shard starts: notes the shard, and kills the worker on the first start
    of shard 1 (kill="once") or on every one (kill="always"), or fails that start with an OSError
    (kill="raise")."""
    from autointerp.distributed import caching

    marks = Path(log)
    with open(marks / "started", "a") as f:
        f.write(f"{index}\n")
    with open(marks / "held", "a") as f:  # whether the worker still holds the model of an earlier shard
        f.write(f"{index} {int(bool(caching._held_models))}\n")
    if index == 1 and (kill == "always" or (kill in ("once", "raise") and not (marks / "killed").exists())):
        (marks / "killed").write_text(str(os.getpid()))
        if kill == "raise":
            raise OSError("the shared folder went away for a moment")
        os.kill(os.getpid(), signal.SIGKILL)


def _started(log: Path) -> list[int]:
    return sorted(int(line) for line in (log / "started").read_text().split())


def _config(out: Path, options: dict):
    return autointerp.Run(out, echo=None, progress=False, **options).config


@pytest.mark.parametrize("kill", ["once", "raise"])
def test_a_shard_that_fails_once_is_retried(cluster, checkpoint, tmp_path, kill):
    options = {**_options(checkpoint), "hookpoints": ["layers.1"]}
    autointerp.Run(tmp_path / "plain", echo=None, progress=False, **options).cache()
    files = RunFiles(tmp_path / "ray")
    files.prepare()
    log = tmp_path / "log"
    log.mkdir()
    hook = functools.partial(record_and_kill, str(log), kill)
    resolved = cache_on_ray(
        files, _config(files.folder, options), RayOptions(shards=3, before_cache_shard=hook), progress=False
    )
    assert (log / "killed").exists()
    assert _started(log) == [0, 1, 1, 2]
    # shards 0 and 1 start on two fresh workers (and shard 1's retry on a restarted or untouched one);
    # shard 2 runs on a worker that cached a shard before, and keeps its model instead of loading it again
    held = sorted(tuple(map(int, line.split())) for line in (log / "held").read_text().splitlines())
    assert held == [(0, 0), (1, 0), (1, 0), (2, 1)]
    assert hookpoint_folders(files.cache) == {"layers.1": files.cache}  # one hookpoint: the cache in cache/ itself
    _assert_same(files.cache, RunFiles(tmp_path / "plain").cache)
    assert resolved == _resolved(tmp_path / "plain")


def test_a_run_stopped_by_a_failed_shard_resumes_without_redoing_finished_shards(cluster, checkpoint, tmp_path):
    options = {**_options(checkpoint), "hookpoints": ["layers.0", "layers.2"]}
    autointerp.Run(tmp_path / "plain", echo=None, progress=False, **options).cache()
    files = RunFiles(tmp_path / "ray")
    files.prepare()
    config = _config(files.folder, options)
    log = tmp_path / "log"
    log.mkdir()
    fail = RayOptions(
        shards=3, max_retries=0, before_cache_shard=functools.partial(record_and_kill, str(log), "always")
    )
    with pytest.raises(DistributedError, match="cache-1"):
        cache_on_ray(files, config, fail, progress=False)
    shards = files.folder / CACHE_SHARDS
    assert (shards / "0" / RESOLVED).exists() and (shards / "2" / RESOLVED).exists()
    assert not (shards / "1" / RESOLVED).exists() and not (files.cache / INDEX).exists()
    (log / "started").unlink()
    again = RayOptions(shards=2, before_cache_shard=functools.partial(record_and_kill, str(log), "never"))
    cache_on_ray(files, config, again, progress=False)
    assert _started(log) == [1]  # the plan of the first start holds (3 shards), and only shard 1 ran
    _assert_same(files.cache, RunFiles(tmp_path / "plain").cache)


def test_a_shard_folder_a_worker_cannot_write_fails_the_run_with_the_path_and_the_host(
    cluster, checkpoint, tmp_path, capsys
):
    """A file where shard 1's folder goes (root writes through any permission bits, a file it cannot write
    into): the run fails at once, not after retries, naming the folder and the worker's host."""
    out = tmp_path / "ray"
    options = {**_options(checkpoint), "hookpoints": "layers.1"}
    plan = plan_shards(16, 2, 2)
    (out / CACHE_SHARDS).mkdir(parents=True)
    (out / CACHE_SHARDS / "plan.json").write_text(
        json.dumps({"n_tokens": 4096, "batch_rows": 2, "shards": [list(s) for s in plan]})
    )
    blocked = out / CACHE_SHARDS / "1"
    blocked.write_text("not a folder")
    assert main(["cache", "--out", str(out), *_argv(options), "--ray", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert f"worker on {socket.gethostname()} cannot write the shared run folder {blocked}" in err, err
    assert (out / CACHE_SHARDS / "0" / RESOLVED).exists()  # the other shard finished, kept for the next start
