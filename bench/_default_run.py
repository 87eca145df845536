"""Shared set-up of the benches that run real latents of the embedded default (imported by bench scripts).

The activation cache of the default model, SAE and corpus is built once in a work folder and reused
by every bench that points there, so comparing explainer prompts or scorer costs pays for caching once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from autointerp.cache.store import ActivationCache
from autointerp.config import RunConfig
from autointerp.pipeline import select_latents
from autointerp.results import RunFiles
from autointerp.stages.cache_stage import cache_stage

WORK = "/tmp/autointerp-bench-explainer"


def default_run(
    work: str, *, judge: str, n_tokens: int, n_held_out: int, n_latents: int
) -> tuple[RunConfig, ActivationCache, list[int]]:
    """The config (response cache off, `n_held_out` activating and silent examples), the cache, and
    the first `n_latents` eligible latents."""
    config = RunConfig(judge=judge, n_tokens=n_tokens, response_cache=False, max_latents=n_latents)
    config.sampling = replace(config.sampling, n_test=n_held_out, n_negatives=n_held_out)
    files = RunFiles(Path(work))
    files.prepare()
    cache_stage(files, config, progress=False)
    cache = ActivationCache(files.cache)
    latents, _ = select_latents(cache, config)
    return config, cache, latents
