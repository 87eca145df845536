"""The latent stages on this machine: explain and score the selected latents of a run folder.

`latent_stages` is what `autointerp explain`, `score` and `run` do after caching, and what each Ray
worker does over its shard of latents (`distributed/latents.py`); `score_label` and `explain_latent`
do it for one latent, as the HTTP service's jobs ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from autointerp.cache.store import HookpointCaches
from autointerp.config import RunConfig
from autointerp.explainers import TOKENS_EXPLAINER
from autointerp.label_check import skipped_note
from autointerp.llm.base import Judge, check_judge_ready
from autointerp.llm.judges import make_judge
from autointerp.llm.providers import JudgeSettings, Role, find_provider
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, run_controls, select_units
from autointerp.records import ExplanationRow, LatentId, ScoreRow
from autointerp.results import RunFiles, materialize
from autointerp.scorers.registry import find_scorer
from autointerp.settings import EXPLAINER_STYLES, ExplainerStyle
from autointerp.stages.cache_stage import run_dictionaries
from autointerp.stages.open_run import OpenRun
from autointerp.stages.subject_loading import check_latents

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class StageJudges:
    """The judges a run's latent stages ask, by name (None: that role asks no LLM), and whether the
    explainer, when it has the judge's name, is still another judge (its own --explainer-url or key)."""

    explainer: str | None
    judge: str | None
    explainer_apart: bool = False

    def keys(self) -> dict[str, tuple[str, Role]]:
        """Each judge to make, once, by the key it is held under: its name, or for an explainer that shares
        the judge's name but not its server, the name with " (explainer)" (the explainer may be the judge)."""
        out: dict[str, tuple[str, Role]] = {}
        if self.explainer is not None:
            out[self.explainer_key] = (self.explainer, "explainer")
        if self.judge is not None:
            out.setdefault(self.judge, (self.judge, "judge"))
        return out

    def names(self) -> list[str]:
        return list(self.keys())

    @property
    def explainer_key(self) -> str:
        assert self.explainer is not None
        return f"{self.explainer} (explainer)" if self.explainer_apart else self.explainer


def explainer_style(config: RunConfig) -> tuple[ExplainerStyle, str]:
    """The explainer style the run uses, and why: --explainer-style when given, else the one that suits the
    explainer's backend (the provider registry says which)."""
    if config.explain.style is not None:
        return config.explain.style, "--explainer-style"
    if config.explainer_model == TOKENS_EXPLAINER:
        return "names", f"--explainer {TOKENS_EXPLAINER} asks no LLM"
    provider = find_provider(config.explainer_model)
    style = provider.explainer_style
    if style not in EXPLAINER_STYLES:
        raise TypeError(f"the judge provider {provider.prefix!r} defaults to an unknown explainer style {style!r}")
    return cast(ExplainerStyle, style), f"the default for {provider.describe}"


def stage_judges(config: RunConfig, stages: set[str]) -> StageJudges:
    """The judges `stages` will ask: the explainer when an LLM writes the labels (the tokens explainer asks
    none), and the judge when a scorer that asks one runs (scoring, the controls, or the scorer that rates
    best-of-n labels). A single run and each Ray worker make exactly these."""
    explaining = "explain" in stages
    explainer = config.explainer_model if explaining and config.explainer_model != TOKENS_EXPLAINER else None
    scoring = "score" in stages or "controls" in stages
    asking = (list(config.scorers) if scoring else []) + (
        [config.explain.best_of_scorer] if explaining and config.explain.best_of > 1 else []
    )
    classes = [find_scorer(name) for name in asking]
    needs_judge = any(cls is None or cls.needs_judge for cls in classes)  # an unknown name fails when built
    judge = config.judge if needs_judge else None
    apart = explainer == judge and JudgeSettings.of(config, "explainer") != JudgeSettings.of(config, "judge")
    return StageJudges(explainer, judge, apart)


async def score_label(
    run: OpenRun, latent: int | LatentId, text: str, scorers: list[str], judge: Judge | None
) -> list[ScoreRow]:
    """Score `text` as an explanation of one latent of the run with each named scorer, on the run's held-out
    split, and write the rows to its scores log: the same rows `autointerp score` writes for that label
    (in a thread: callers are long-lived processes with other work on their event loop)."""
    chosen = run.scorers(scorers)
    for scorer in chosen:
        scorer.check_judge(judge)
    worker = LatentWorker(
        run.files, run.config, run.samplers, None, judge, chosen, {"score"}, RunSummary(), write_in_thread=True
    )
    return await worker.score_text(run.unit(latent), text)


async def explain_latent(
    run: OpenRun, latent: int | LatentId, explainer: Judge | None, judge: Judge | None
) -> ExplanationRow:
    """Explain one latent of the run now (`explainer` None: the tokens explainer, no LLM; `judge` rates
    best-of-n candidates, when the run draws several) and write its row, which becomes the latent's current
    explanation, as `autointerp explain` would."""
    config = run.config
    if (explainer is None) != (config.explainer_model == TOKENS_EXPLAINER):
        config = replace(config, explainer=TOKENS_EXPLAINER if explainer is None else explainer.model)
    if config.explain.style is None:
        config = replace(config, explain=replace(config.explain, style=explainer_style(config)[0]))
    chooser = run.chooser() if explainer is not None else None
    if chooser is not None:
        chooser.check_judge(judge)
    worker = LatentWorker(
        run.files, config, run.samplers, explainer, judge, [], {"explain"}, RunSummary(), chooser, write_in_thread=True
    )
    return await worker.explain_latent(run.unit(latent))


def write_results(files: RunFiles, config: RunConfig, resolved: dict[str, Any]) -> pd.DataFrame:
    """Rebuild results.parquet and judgments.parquet from the logs: the config's scorers' columns first, then
    those of any other scorer the log holds (one asked for through the HTTP service, say)."""
    return materialize(
        files,
        {k: resolved.get(k) for k in ("model", "dictionary", "hookpoint")},
        config.scorers,
        dictionaries=run_dictionaries(resolved),
    )


def rare_note(caches: HookpointCaches, n_rare: int, config: RunConfig) -> str:
    """The summary's line on latents too rare to explain (a distributed run's driver says it too)."""
    total = sum(caches.num_latents(hp) for hp in caches)
    at = f" (over {len(caches)} hookpoints)" if len(caches) > 1 else ""
    return (
        f"{n_rare} of {total} latents{at} fire in fewer than {config.sampling.min_examples} windows "
        "and are not eligible"
    )


Ready = Callable[[], RunConfig | tuple[RunConfig, list[LatentId]]]  # the config to run, or it and the pairs to do


def check_cached_latents(config: RunConfig, caches: HookpointCaches) -> None:
    """The latents asked for exist in the dictionary of every cached hookpoint."""
    for hookpoint in caches:
        check_latents(config, caches.num_latents(hookpoint), hookpoint if len(caches) > 1 else None)


def stage_units(
    caches: HookpointCaches, config: RunConfig, ready: Ready | None
) -> tuple[RunConfig, list[LatentId], str | None]:
    """Once the judges are checked: the config to run with (`ready()`'s, when given), the (hookpoint, latent)
    pairs to do (those `ready()` names, else the run's selection) and the note on latents too rare to
    explain (None when none is)."""
    chosen: list[LatentId] | None = None
    if ready is not None:
        got = ready()
        config, chosen = got if isinstance(got, tuple) else (got, None)
    latents, n_rare = select_units(caches, config)
    return config, latents if chosen is None else chosen, rare_note(caches, n_rare, config) if n_rare else None


async def latent_stages(
    files: RunFiles,
    config: RunConfig,
    stages: set[str],
    *,
    progress: bool = True,
    judges: dict[str, Judge] | None = None,
    ready: Ready | None = None,
    on_done: Callable[[LatentId], None] | None = None,
) -> RunSummary:
    """Explain and/or score the selected latents; `judges` (by name) overrides model loading in tests.

    Every judge is made and checked (reachable, able to do what each scorer needs) before any latent
    is touched; then `ready()`, when given, is called and returns the config whose latents to do, or the
    config and the very (hookpoint, latent) pairs to do (the API imports explanations there and records
    the stage's validated options; a shard of a distributed run names its share of the run's pairs).

    The stage "controls" alone runs only the shuffled-label control pass (a distributed run does it once
    every shard's labels are in, since donors are drawn from every labelled latent); "score" runs it
    after scoring, as a single run does. `on_done((hookpoint, latent))` is called as each latent of a
    pass ends.
    """
    if config.explain.style is None:  # a library caller's config: the style its explainer suits
        config = replace(config, explain=replace(config.explain, style=explainer_style(config)[0]))
    config.validate()
    caches = HookpointCaches(files.cache)
    check_cached_latents(config, caches)
    run = OpenRun(files, config, cache=caches)
    scorers = run.scorers(config.scorers)
    loaded: dict[str, Judge] = dict(judges or {})

    needed = stage_judges(config, stages)
    roles = needed.keys()

    def judge(key: str) -> Judge:
        if key not in loaded:
            name, role = roles[key]
            # a judge handed in by name answers in every role it has that name in
            loaded[key] = loaded[name] if name in loaded else make_judge(name, config, role=role)
        return loaded[key]

    explainer = judge(needed.explainer_key) if needed.explainer is not None else None
    chooser = run.chooser() if "explain" in stages else None
    scoring = "score" in stages or "controls" in stages
    asking = (scorers if scoring else []) + ([chooser] if chooser else [])
    scorer_judge = judge(needed.judge) if needed.judge is not None else None
    summary = RunSummary()
    try:
        # a judge that cannot do what a scorer needs, or cannot be reached, fails here, not on every latent
        for scorer in asking:
            scorer.check_judge(scorer_judge)
        for used in {id(j): j for j in (explainer, scorer_judge) if j is not None}.values():
            await check_judge_ready(used)
        config, latents, note = stage_units(caches, config, ready)
        if note:
            summary.messages.append(note)
        skipped = skipped_note(config.explain, explainer) if "explain" in stages else None
        if skipped:
            summary.messages.append(skipped)
        worker = LatentWorker(
            files, config, run.samplers, explainer, scorer_judge, scorers, stages, summary, chooser=chooser
        )
        if "explain" in stages or "score" in stages:
            await process_latents(latents, worker, concurrency=config.concurrency, progress=progress, on_done=on_done)
        if scoring and config.controls == "shuffled":
            await run_controls(
                latents,
                worker,
                seed=config.sampling.seed,
                concurrency=config.concurrency,
                progress=progress,
                on_done=on_done,
            )
        return summary
    finally:
        for name, j in loaded.items():
            if hasattr(j, "summary"):
                summary.messages.append(f"{name}: {j.summary()}")
            if judges is None or j not in judges.values():
                await j.aclose()
