"""Runs on a local Ray cluster that declares 2 GPUs (none is there: Ray counts GPUs as resources, and
nothing here touches one): a run that needs a GPU gets one worker per GPU, each with its own GPU, and each
worker makes its judges once for every shard it runs, where a Ray task that takes a GPU would get a fresh
process, and load its judge again, for each shard."""

from __future__ import annotations

import functools
from dataclasses import replace

import pandas as pd
import pytest
from helpers.ray_judges import counted_judges
from test_ray import STAGES, _copy, _finished_once, _plain, _tables, make_template

from autointerp.distributed.latents import RayOptions, _needs_gpu, run_latent_stages

pytestmark = pytest.mark.slow  # a Ray cluster takes seconds to start

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def template(tiny_llama, tmp_path_factory):
    return make_template(tiny_llama, tmp_path_factory.mktemp("ray_template"))


def test_a_run_needing_gpus_makes_its_judges_once_per_gpu_not_once_per_shard(gpu_cluster, template, tmp_path):
    plain, config = _copy(template, tmp_path, "plain")
    config = replace(config, device="cuda")  # the latent stages of this run load no model: no GPU is touched
    assert _needs_gpu(config)
    plain_summary, _ = _plain(plain, config)
    spread, _ = _copy(template, tmp_path, "ray")
    loads = tmp_path / "loads"
    factory = functools.partial(counted_judges, str(loads))
    summary = run_latent_stages(spread, config, STAGES, RayOptions(judges=factory, shards=6), progress=False)
    want_results, want_judgments = _tables(plain, config)
    got_results, got_judgments = _tables(spread, config)
    pd.testing.assert_frame_equal(got_results, want_results)
    pd.testing.assert_frame_equal(got_judgments, want_judgments)
    assert summary.controlled == plain_summary.controlled > 0
    _finished_once(spread)
    # 12 shards (6 per pass) on 2 GPUs: 2 loads, each in its own process on its own GPU
    loaded = [line.split() for line in loads.read_text().splitlines()]
    pids, gpus = [pid for pid, _ in loaded], [gpu for _, gpu in loaded]
    assert len(loaded) == 2, loaded
    assert len(set(pids)) == 2 and sorted(gpus) == ["0", "1"], loaded
