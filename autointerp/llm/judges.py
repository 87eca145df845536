"""Judges by name, built from a run's settings: the one place a judge is made, for the command line and
the API, the HTTP service and each Ray worker alike.

A judge is its backend (found by `providers.py` from the name's prefix) behind two layers, outside in:
the response cache (a hit never waits for a slot) and the ordering gate (bounded requests in flight,
served by latent and stage so shared prefixes stay together).
"""

from __future__ import annotations

from typing import Any

from autointerp.llm.base import Judge
from autointerp.llm.providers import JudgeSettings, Role, find_provider


def make_judge(name: str, config: Any, *, backend: Judge | None = None, role: Role = "judge") -> Judge:
    """The judge `name` with the settings of `config` (a `RunConfig` or `JudgeSettings`) for `role` (the
    explainer's server and key may be its own).

    `backend`, when given, answers in place of the backend the name would load (tests hand scripted
    judges, a bench an instant one); it is wrapped the same way, its answers cached under its own name
    and model."""
    settings = JudgeSettings.of(config, role)
    if backend is not None:
        return wrap_judge(
            backend, settings, namespace=f"served:{name}:{backend.model}", slots=settings.judge_concurrency or 1
        )
    provider = find_provider(name)
    provider.check_installed(name)
    slots = settings.judge_concurrency or provider.slots(settings)
    loaded = provider.load(name.removeprefix(provider.prefix), settings, slots)
    return wrap_judge(loaded, settings, namespace=provider.namespace(name, loaded, settings), slots=slots)


def wrap_judge(backend: Judge, config: Any, *, namespace: str, slots: int) -> Judge:
    """A backend behind the ordering gate (`slots` requests in flight) and, unless the settings turn it off,
    the response cache under `namespace` (which must name the backend and model: two never share answers)."""
    from autointerp.llm.assets import default_cache_dir
    from autointerp.llm.ordering import OrderedJudge

    settings = JudgeSettings.of(config)
    judge: Judge = OrderedJudge(backend, slots)
    if not settings.response_cache:
        return judge
    from autointerp.llm.cache import CachedJudge

    path = settings.response_cache_path or default_cache_dir() / "responses.sqlite"
    return CachedJudge(judge, path, namespace=namespace)
