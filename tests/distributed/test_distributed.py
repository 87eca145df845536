"""The parts of a Ray run that need no cluster: shard logs read and merged exactly once, latents cut into
shards, the judge spread over several servers, and the errors a user can act on (no Ray installed, a
cluster out of reach)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from helpers.fault_server import FaultServer
from helpers.report_fixtures import SAMPLING, write_word_tokenizer

from autointerp.cli import main
from autointerp.config import RunConfig, save_config
from autointerp.distributed.cluster import DistributedError, check_reachable
from autointerp.distributed.latents import _needs_gpu
from autointerp.distributed.shards import SHARDS, ShardFiles, merge_shards, split
from autointerp.distributed.workers import worker_options
from autointerp.llm.base import JudgeError
from autointerp.llm.judges import make_judge
from autointerp.llm.openai_compat import OpenAIJudge
from autointerp.llm.spread import SpreadJudge, split_urls
from autointerp.results import RunFiles
from autointerp.stages.latent_stages import latent_stages


@pytest.fixture(scope="module")
def template(tiny_llama, tmp_path_factory):
    from helpers.tiny_subjects import build_tiny_cache

    folder = tmp_path_factory.mktemp("shard_template")
    tokenizer = write_word_tokenizer(folder / "subject")
    build_tiny_cache(folder, tiny_llama)
    config = RunConfig(model=str(tokenizer), sampling=SAMPLING, max_latents=8, judge="j", explainer="e")
    files = RunFiles(folder)
    files.prepare()
    save_config(files.config, config, {})
    return folder, config


def _copy(template, tmp_path: Path, name: str) -> tuple[RunFiles, RunConfig]:
    folder, config = template
    shutil.copytree(folder, tmp_path / name)
    return RunFiles(tmp_path / name), config


def _plain(files: RunFiles, config: RunConfig) -> None:
    from helpers.ray_judges import scripted_judges

    judges = scripted_judges()
    judges = {"j": judges["scripted-judge"], "e": judges["scripted-explainer"]}
    asyncio.run(latent_stages(files, config, {"explain", "score"}, progress=False, judges=judges))


def test_shards_read_the_run_and_their_own_logs_and_merge_exactly_once(tmp_path, template):
    run, config = _copy(template, tmp_path, "run")
    _plain(run, config)
    whole = (run.explanations.read_bytes(), run.scores.read_bytes())
    # move the second half of the logs into two shards, as shards that had finished would hold them
    cut_e = whole[0].index(b"\n", len(whole[0]) // 2) + 1
    cut_s = whole[1].index(b"\n", len(whole[1]) // 2) + 1
    run.explanations.write_bytes(whole[0][:cut_e])
    run.scores.write_bytes(whole[1][:cut_s])
    a, b = ShardFiles(run, "latents-00000"), ShardFiles(run, "latents-00001")
    a.prepare()
    b.prepare()
    a.explanations.write_bytes(whole[0][cut_e:])
    b.scores.write_bytes(whole[1][cut_s:] + b'{"latent": 3, "torn')  # a worker killed mid-write
    # a shard sees the run's rows and its own
    assert set(a.explanations_by_latent()) == set(RunFiles(tmp_path / "run").explanations_by_latent()) | set(
        json.loads(line)["latent"] for line in whole[0][cut_e:].splitlines()
    )
    # a driver killed mid-merge: the ledger names shard b and the sizes before it; half of b was appended
    (run.folder / SHARDS / "merging.json").write_text(
        json.dumps({"shard": "latents-00001", "sizes": {"explanations.jsonl": cut_e, "scores.jsonl": cut_s}})
    )
    with open(run.scores, "ab") as f:
        f.write(whole[1][cut_s : cut_s + 10])
    merge_shards(run)
    assert sorted(run.explanations.read_bytes().splitlines()) == sorted(whole[0].splitlines())
    assert sorted(run.scores.read_bytes().splitlines()) == sorted(whole[1].splitlines())
    assert not any((run.folder / SHARDS).iterdir())
    merge_shards(run)  # nothing left: nothing added
    assert sorted(run.scores.read_bytes().splitlines()) == sorted(whole[1].splitlines())


def test_latents_are_cut_into_nearly_equal_shards_in_order():
    assert split(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split([5, 1], 8) == [[5], [1]]
    assert split([], 4) == []


def test_a_run_needing_a_gpu_asks_ray_for_workers_of_one_gpu_each():
    """A vLLM judge or explainer, or models on CUDA: each worker actor holds a GPU (its own vLLM engine),
    otherwise a CPU; a worker is restarted as often as its shards' retries could ask."""
    for config in (
        RunConfig(judge="vllm:Qwen/Qwen2.5-7B-Instruct"),
        RunConfig(explainer="vllm:Qwen/Qwen2.5-7B-Instruct"),
        RunConfig(device="cuda:1"),
    ):
        assert worker_options(_needs_gpu(config), 3, 4) == {"num_gpus": 1, "max_restarts": 12, "max_task_retries": 3}
    assert worker_options(_needs_gpu(RunConfig()), 0, 5) == {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}


def test_ray_missing_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    assert main(["run", "--out", str(tmp_path / "run"), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "autointerp[ray]"' in err and "--ray" in err


def test_an_unreachable_ray_address_fails_fast_and_names_it(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert main(["run", "--out", str(tmp_path / "run"), "--ray", f"127.0.0.1:{port}", "--quiet"]) == 2
    assert time.monotonic() - start < 10
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    with pytest.raises(DistributedError, match="expected 'auto', HOST:PORT"):
        check_reachable("nonsense")


def test_requests_are_spread_over_several_servers_and_each_is_checked():
    assert split_urls("http://a/v1, http://b/v1,http://a/v1") == ["http://a/v1", "http://b/v1"]
    assert split_urls(None) == [None]

    def slow(request, n):
        time.sleep(0.05)
        return ("ok", "Yes", {"Yes": -0.1, "No": -2.3})

    with FaultServer(slow) as a, FaultServer(slow) as b:
        config = RunConfig(judge_url=f"{a.url},{b.url}", response_cache=False)
        judge = make_judge("openai:fake", config)

        async def ask() -> None:
            await judge.inner.check()
            await asyncio.gather(*(judge.chat([{"role": "user", "content": str(i)}]) for i in range(16)))
            await judge.aclose()

        asyncio.run(ask())
        spread = judge.inner  # behind the ordering gate (no response cache here)
        assert isinstance(spread, SpreadJudge) and spread.sent == [8, 8]
        asked = [r for r in a.requests + b.requests if r[1]["max_tokens"] > 1]  # not the reachability checks
        assert len(asked) == 16 and len(a.requests) >= 8 and len(b.requests) >= 8
    with FaultServer() as good:
        dead = "http://127.0.0.1:9/v1"
        judge = SpreadJudge([OpenAIJudge("m", good.url), OpenAIJudge("m", dead, timeout=1)])
        with pytest.raises(JudgeError, match="127.0.0.1:9"):
            asyncio.run(judge.check())
