"""The run: cache, then for each latent build its record, explain it, score it; resumable throughout.

Latents are processed with bounded concurrency; each latent's failure is recorded (status and
traceback) and the run goes on. Work already in the run folder's logs is skipped, so running the
same command again after a crash finishes the job without repeating or duplicating anything.
Within a latent, every scorer prompt starts with the same system prompt and explanation. Each
latent's work carries a judge priority key (its position in the run, then its stage), so a judge
behind an `OrderedJudge` gate serves one latent's scorer prompts back to back even when several
latents are in flight, and a prefix cache (server or llama.cpp KV) is hit.

After the latents, the control pass (`run_controls`) scores each explained latent's held-out
examples again with another latent's label (controls.py), the same way and with the same keys.

A latent is named by its hookpoint and index (`LatentId`): a run of several hookpoints is one list
of such units, each built from its own hookpoint's cache, so a shard of (hookpoint, latent) pairs is
a unit of work for any caller that splits a run.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autointerp.cache.store import ActivationCache
from autointerp.config import ConfigError, RunConfig
from autointerp.controls import TOO_FEW, donor_map
from autointerp.explainers import TOKENS_EXPLAINER, ExplanationFailed, explain, explain_by_tokens
from autointerp.latent_choice import choose_latents, out_of_range
from autointerp.llm.base import Judge
from autointerp.llm.ordering import judge_priority
from autointerp.records import Candidate, Explanation, ExplanationRow, LatentId, LatentRecord, ScoreRow
from autointerp.results import RunFiles, append_row
from autointerp.sampling import NotEnoughExamples, Sampler
from autointerp.scorers.base import Scorer
from autointerp.selection import best_of_n


@dataclass
class RunSummary:
    latents: int = 0
    explained: int = 0
    scored: int = 0
    skipped: int = 0
    controlled: int = 0  # latents whose shuffled-label control was scored in this run
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    failed_latents: set[LatentId] = field(default_factory=set)  # no label, or a scorer that ended without a score

    @property
    def failed(self) -> int:
        return len(self.failed_latents)


def select_latents(cache: ActivationCache, config: RunConfig) -> tuple[list[int], int]:
    """The latents of a one-hookpoint cache to process, and how many fire too rarely to be eligible
    (see `select_units`)."""
    units, n_rare = select_units({cache.meta.hookpoint: cache}, config)
    return [u.index for u in units], n_rare


def select_units(caches: Mapping[str, ActivationCache], config: RunConfig) -> tuple[list[LatentId], int]:
    """The (hookpoint, latent) pairs to process, hookpoint by hookpoint in the run's order, and how many
    latents (over all hookpoints) fire too rarely to be eligible.

    Explicit `latents` are taken as given at every hookpoint (ineligible ones become 'skipped' rows that
    say why); otherwise the first `max_latents` eligible latents of each hookpoint by index, or a seeded
    random sample of `sample_latents` of them (latent_choice.py).
    """
    units: list[LatentId] = []
    n_rare = 0
    for hookpoint, cache in caches.items():
        n = cache.num_latents
        bad = out_of_range(config.latents, n)
        if bad:
            at = f" at {hookpoint}" if len(caches) > 1 else ""
            raise ConfigError(
                f"latents {', '.join(bad[:10])} are out of range: the dictionary{at} has {n} latents (0..{n - 1})"
            )
        fire = cache.state.fire_windows
        eligible = [i for i in range(n) if fire[i] >= config.sampling.min_examples]
        n_rare += n - len(eligible)
        chosen = choose_latents(
            eligible,
            hookpoint=hookpoint,
            latents=config.latents,
            max_latents=config.max_latents,
            sample_latents=config.sample_latents,
            seed=config.sampling.seed,
        )
        units += [LatentId(hookpoint, i) for i in chosen]
    return units, n_rare


def _explanation_row(record: LatentRecord, status: str, **fields: Any) -> ExplanationRow:
    """A row for a latent whose record was built: its statistics and every window the explainer saw."""
    quantile = {e.window: -1 for e in record.train_negatives} | {e.window: e.quantile for e in record.train}
    shown = sorted(quantile.items())
    return ExplanationRow(
        latent=record.latent.index,
        hookpoint=record.latent.hookpoint,
        status=status,
        frequency=record.stats.frequency,
        max_activation=record.stats.max_activation,
        fire_windows=record.stats.fire_windows,
        n_tokens=record.stats.n_tokens,
        n_train=len(record.train),
        n_test=len(record.test),
        n_negatives=len(record.negatives),
        train_windows=[w for w, _ in shown],
        train_quantiles=[q for _, q in shown],
        validation_windows=sorted(record.validation_windows()),
        **fields,
    )


class LatentWorker:
    """Does the stages asked for on one latent, writing each finished unit to the run's logs.

    `sampler` builds the records: one `Sampler` for a run of one hookpoint, or a mapping from hookpoint to
    its sampler (which may build them on first use). Latents are `LatentId`s, or plain indices in a run of
    one hookpoint.
    """

    def __init__(
        self,
        files: RunFiles,
        config: RunConfig,
        sampler: Sampler | Mapping[str, Sampler],
        explainer: Judge | None,
        judge: Judge | None,
        scorers: Sequence[Scorer],
        stages: set[str],
        summary: RunSummary,
        chooser: Scorer | None = None,
        *,
        write_in_thread: bool = False,
    ):
        self.files = files
        self.config = config
        self.samplers: Mapping[str, Sampler] = (
            {sampler.cache.meta.hookpoint: sampler} if isinstance(sampler, Sampler) else sampler
        )
        self.explainer = explainer
        self.judge = judge
        self.scorers = list(scorers)
        self.stages = stages
        self.summary = summary
        self.chooser = chooser  # the scorer that picks among best-of-n labels (on the validation split)
        # A row's append ends with an fsync (milliseconds). A run writes inline: nothing else moves meanwhile,
        # so one latent's stages reach the judge back to back. A long-lived server (the HTTP service) writes
        # in a thread, so its event loop answers requests and other jobs meanwhile.
        self.write_in_thread = write_in_thread

    # What the logs already hold, read on first use: `process` (a run's resume) needs them, while the
    # one-latent calls below (the HTTP service's jobs) do not, and must not read whole logs per call.
    @cached_property
    def explanations(self) -> dict[LatentId, ExplanationRow]:
        return self.files.explanations_by_unit()

    @cached_property
    def scored(self) -> set[tuple[LatentId, str, str]]:
        """(latent, scorer, text) of every finished score: a label scored once is not scored again, whether or
        not it is still the latent's current one (an imported label that comes back keeps its score)."""
        return self.files.finished_scores()

    def unit(self, latent: int | LatentId) -> LatentId:
        """A latent as (hookpoint, index); a plain index is of the run's only hookpoint."""
        if isinstance(latent, LatentId):
            return latent
        if len(self.samplers) != 1:
            raise ValueError(f"latent {latent}: this run has several hookpoints ({', '.join(self.samplers)}), name one")
        return LatentId(next(iter(self.samplers)), int(latent))

    def _record(self, lid: LatentId) -> LatentRecord:
        return self.samplers[lid.hookpoint].record(lid.index)

    async def process(self, latent: int | LatentId) -> None:
        lid = self.unit(latent)
        done = self.explanations.get(lid)
        if done and done.status == "skipped":
            self.summary.skipped += 1
            return
        try:
            record = await asyncio.to_thread(self._record, lid)
        except NotEnoughExamples as e:
            skipped = ExplanationRow(lid.index, lid.hookpoint, status="skipped", error=str(e))
            await self._append(self.files.explanations, skipped)
            self.summary.skipped += 1
            return
        if "explain" in self.stages and (done is None or done.status == "error"):
            with judge_priority(0):
                done = await self._explain(record)
        if done is None or done.status != "ok":
            if done is not None and done.status != "ok":
                self.summary.failed_latents.add(lid)
            return
        if "score" in self.stages:
            assert done.explanation is not None
            explanation = Explanation(latent=record.latent, text=done.explanation, model=done.explainer_model or "")
            todo = [s for s in self.scorers if not self._scored(lid, s.name, explanation.text)]
            for scorer in todo:
                with judge_priority(1 + self.scorers.index(scorer)):
                    await self._score(scorer, record, explanation)
            if todo:
                self.summary.scored += 1

    async def _append(self, path: Path, row: ExplanationRow | ScoreRow) -> None:
        if self.write_in_thread:
            await asyncio.to_thread(append_row, path, row)
        else:
            append_row(path, row)

    def _scored(self, latent: LatentId, scorer: str, text: str) -> bool:
        """Done already: a finished score of this very text (an imported replacement makes old scores stale)."""
        return (latent, scorer, text) in self.scored

    async def explain_latent(self, latent: int | LatentId) -> ExplanationRow:
        """Explain one latent now and write its row (it becomes the latent's current explanation).

        `NotEnoughExamples` is raised, not logged: the caller asked for this latent and should hear why.
        """
        record = await asyncio.to_thread(self._record, self.unit(latent))
        return await self._explain(record)

    async def score_text(self, latent: int | LatentId, text: str) -> list[ScoreRow]:
        """Score `text` as an explanation of the latent with each of the worker's scorers, on the run's
        held-out split, writing one row per scorer; any label, not only the latent's current one."""
        record = await asyncio.to_thread(self._record, self.unit(latent))
        explanation = Explanation(latent=record.latent, text=text, model="")
        rows = []
        for position, scorer in enumerate(self.scorers):
            with judge_priority(1 + position):
                rows.append(await self._score(scorer, record, explanation))
        return rows

    async def _explain(self, record: LatentRecord) -> ExplanationRow:
        settings = self.config.explain
        by_tokens = self.config.explainer_model == TOKENS_EXPLAINER  # no LLM: the marked tokens are the label
        explainer = self.explainer
        assert by_tokens or explainer is not None
        model = explainer.model if explainer is not None else TOKENS_EXPLAINER
        try:
            candidates: list[Candidate] | None = None
            chosen_by: str | None = None
            if by_tokens or explainer is None:
                expl = explain_by_tokens(record, settings)
            elif settings.best_of > 1:
                if self.chooser is None or (self.judge is None and self.chooser.needs_judge):
                    raise ValueError("best-of-n explanations need a scorer and a judge to choose with")
                expl, candidates = await best_of_n(record, explainer, self.judge, self.chooser, settings)
                chosen_by = self.chooser.name
            else:
                expl = await explain(record, explainer, settings)
            row = _explanation_row(
                record,
                "ok",
                explanation=expl.text,
                explainer_model=expl.model,
                usage=None if by_tokens else expl.usage,  # no calls, no tokens: nothing to account for
                failures=expl.failures,
                raw=expl.raw,
                phrase_check=expl.phrase_check,
                candidates=candidates,
                chosen_by=chosen_by,
            )
            self.summary.explained += 1
        except ExplanationFailed as e:
            row = _explanation_row(record, "failed", error=str(e), explainer_model=model)
        except Exception:  # noqa: BLE001 - one latent's crash must not end the run
            row = _explanation_row(record, "error", error=traceback.format_exc(), explainer_model=model)
        await self._append(self.files.explanations, row)
        return row

    async def control(self, latent: LatentId, donor: LatentId, label_row: ExplanationRow, done: set[str]) -> None:
        """Score the latent's held-out examples with the donor's label, by every scorer not in `done`."""
        assert label_row.explanation is not None
        try:
            record = await asyncio.to_thread(self._record, latent)
        except NotEnoughExamples:  # it had an explanation, so only a changed cache could get here
            return
        label = Explanation(latent=record.latent, text=label_row.explanation, model=label_row.explainer_model or "")
        todo = [s for s in self.scorers if s.name not in done]
        for scorer in todo:
            with judge_priority(1 + self.scorers.index(scorer)):
                await self._score(scorer, record, label, donor=donor)
        if todo:
            self.summary.controlled += 1

    async def _score(
        self, scorer: Scorer, record: LatentRecord, explanation: Explanation, *, donor: LatentId | None = None
    ) -> ScoreRow:
        hookpoint = record.latent.hookpoint
        donor_index = donor.index if donor is not None else None
        donor_hookpoint = donor.hookpoint if donor is not None and donor.hookpoint != hookpoint else None
        # a scorer that asks no LLM (embedding) names its own model, and may run with no judge loaded
        judge_model = scorer.judge_model(self.judge)
        try:
            # a control pass asks the scorer for its chance level (with a donor's label, for most)
            score = await (scorer.control if donor is not None else scorer)(record, explanation, self.judge)
            row = ScoreRow.of(
                score,
                hookpoint=hookpoint,
                judge_model=judge_model,
                explanation=explanation.text,
                donor=donor_index,
                donor_hookpoint=donor_hookpoint,
            )
            if score.n_examples > 0 and score.n_failed >= score.n_examples:
                # a score none of whose judge answers could be used (a judge gone mid-run) is no score: it is
                # counted as a failure, and done again when the run is resumed
                reasons = [j.error for j in score.judgments if j.error]
                row.status = "failed"
                row.error = (
                    f"no judge answer could be used ({score.n_failed} of {score.n_examples}); first reason: "
                    f"{reasons[0] if reasons else 'unknown'}"
                )
                self.summary.failed_latents.add(record.latent)
        except Exception:  # noqa: BLE001 - recorded with its traceback, the run goes on
            row = ScoreRow(
                latent=record.latent.index,
                hookpoint=hookpoint,
                scorer=scorer.name,
                status="error",
                explanation=explanation.text,
                judge_model=judge_model,
                error=traceback.format_exc(),
                donor=donor_index,
                donor_hookpoint=donor_hookpoint,
            )
            self.summary.failed_latents.add(record.latent)
        await self._append(self.files.scores, row)
        return row


async def process_latents(
    latents: Sequence[int | LatentId],
    worker: LatentWorker,
    *,
    concurrency: int = 1,
    progress: bool = True,
    on_done: Callable[[LatentId], None] | None = None,
) -> RunSummary:
    """Run `worker` over the latents, at most `concurrency` at a time, in the given order.

    Each latent's judge requests carry its position as their priority key (see llm/ordering.py).
    `on_done(latent)` is called as each latent ends (a distributed run counts them for its one bar).
    """
    start = time.perf_counter()
    units = [worker.unit(i) for i in latents]
    await _each(units, worker.process, concurrency=concurrency, progress=progress, desc="latents", on_done=on_done)
    worker.summary.latents = len(latents)
    worker.summary.seconds = time.perf_counter() - start
    return worker.summary


async def run_controls(
    latents: Sequence[int | LatentId],
    worker: LatentWorker,
    *,
    seed: int,
    concurrency: int = 1,
    progress: bool = True,
    on_done: Callable[[LatentId], None] | None = None,
) -> RunSummary:
    """The control pass: each of `latents` that has a label is scored again with its donor's label.

    Donors come from a derangement (controls.py) of every labelled (hookpoint, latent) in the run folder,
    not only of `latents`, so that scoring a few latents (`--latents 5`, an import of one label) still
    has labels to borrow; in a run of several hookpoints a donor may be of another hookpoint. A (latent,
    scorer) whose control is already in the log is not scored again, even if the donors have changed
    since (more latents, say): it is still a wrong label for that latent. With fewer than two labelled
    latents there is no other label to lend: the summary says so and the run goes on.
    """
    start = time.perf_counter()
    explanations = worker.files.explanations_by_unit()
    controls = worker.files.controls_by_unit()
    names = [s.name for s in worker.scorers]
    done = {
        u: {n for n in names if (c := controls.get((u, n))) is not None and c.status == "ok"}
        for u in dict.fromkeys(worker.unit(i) for i in latents)
        if _labelled(explanations.get(u))
    }
    todo = [u for u, finished in done.items() if len(finished) < len(names)]
    if not todo:
        return worker.summary
    pool = [u for u, row in explanations.items() if _labelled(row)]
    if len(pool) < 2:
        worker.summary.messages.append(TOO_FEW)
        return worker.summary
    donors = donor_map(pool, seed)

    async def control(latent: LatentId) -> None:
        donor = donors[latent]
        await worker.control(latent, donor, explanations[donor], done[latent])

    await _each(todo, control, concurrency=concurrency, progress=progress, desc="controls", on_done=on_done)
    worker.summary.seconds += time.perf_counter() - start
    return worker.summary


def _labelled(row: ExplanationRow | None) -> bool:
    return row is not None and row.status == "ok" and bool(row.explanation)


async def _each(
    latents: list[LatentId],
    work: Callable[[LatentId], Awaitable[None]],
    *,
    concurrency: int,
    progress: bool,
    desc: str,
    on_done: Callable[[LatentId], None] | None = None,
) -> None:
    """`work` on every latent, at most `concurrency` at a time, each under its position's judge priority."""
    semaphore = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(latents), unit="latent", desc=desc, disable=not progress, dynamic_ncols=True)

    async def one(position: int, latent: LatentId) -> None:
        async with semaphore:
            with judge_priority(position):
                await work(latent)
        bar.update(1)
        if on_done is not None:
            on_done(latent)

    try:
        await asyncio.gather(*(one(p, i) for p, i in enumerate(latents)))
    finally:
        bar.close()
