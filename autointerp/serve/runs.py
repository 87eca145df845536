"""The runs the service serves, each opened once per process, and what a job does to one.

A run is opened on first use: its config.json, then (in a thread) its activation cache, and for jobs and
latent records its `OpenRun` (tokenizer, sampler with the run's own held-out split, scorers). Judges
are made once per process for each name and judge settings, and shared by every run that names them.

Jobs write through the pipeline's own writers (`score_label`, `explain_latent`), so their rows are
the rows the CLI writes. They are idempotent, which is what makes a restart safe: a score job first looks
in the run's log for a finished score of the same label by the same scorer and judge, and answers with it
if there is one (a job cut off by a crash after writing its row is not run twice; an identical request is
not paid twice); an explain job answers with the latent's current explanation when the same explainer made
it. Identical work in flight at once is done once: the second job waits on the first's lock, then finds its
row. What scoring does ask is asked through the response cache, so a job that resumes after a crash, or a
label scored before in another run folder over the same windows, costs no judge call again.

The logs are kept in memory as an index (`LogIndex`) that reads only what was appended since it last
looked, so a job does not re-read a log that grows with every job; the results tables (results.parquet,
judgments.parquet) are rebuilt in the background shortly after jobs finish, as the CLI does after a command.

A command writing a run folder and the service are kept apart by the folder's lock (folder_lock.py): the
service holds it while any of its jobs on the run writes (jobs of one run share the hold), and lets it
go when the last one is done. A job that finds the lock held by a command waits for it (its progress
says `waiting for the run folder` and names the holder) rather than failing: the command's rows are
read first, so the job reuses a score the command made (a job that only reuses one takes no lock at all:
it writes nothing). The results tables are rebuilt only while the
service holds the lock, or can take it at once; otherwise the command rebuilds them when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autointerp.cache.store import CacheMeta, HookpointCaches, cache_complete, hookpoint_folders, read_metas
from autointerp.config import ConfigError, RunConfig, load_config
from autointerp.errors import AutointerpError
from autointerp.explainers import TOKENS_EXPLAINER
from autointerp.folder_lock import FolderLock, Holder, command_line
from autointerp.llm.base import Judge, check_judge_ready
from autointerp.llm.judges import make_judge
from autointerp.llm.providers import JudgeSettings, Role
from autointerp.records import ExplanationRow, LatentId, ScoreRow
from autointerp.results import RunFiles, read_jsonl_at, scan_jsonl
from autointerp.sampling import NotEnoughExamples
from autointerp.scorers.registry import find_scorer, scorer_names
from autointerp.serve.jobs import Job
from autointerp.serve.paths import NotFound, list_runs, run_folder
from autointerp.serve.queue import Cancelled, Outcome, Progress
from autointerp.stages.latent_stages import explain_latent, score_label, write_results
from autointerp.stages.open_run import OpenRun

log = logging.getLogger("autointerp.serve")

# The results tables are rebuilt from the whole logs, which costs more as they grow: once a run has been
# quiet for RESULTS_QUIET seconds, or, under steady load, every RESULTS_EVERY seconds (and at least 10
# times as long as the last rebuild took), so rebuilding never takes more than a sliver of the server.
RESULTS_QUIET = 0.5
RESULTS_EVERY = 30.0
MAX_SCORERS = 16
LOCK_POLL_S = 0.25  # a job waiting for the run folder tries its lock this often

BackendFactory = Callable[[], Judge]


class RequestError(ValueError):
    """A request the service refuses; `field` names the part that is wrong, `status` the HTTP answer."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


class _JobCancelled(Exception):
    """The job was cancelled before it wrote anything."""


def _waiting(progress: Progress, cancelled: Cancelled) -> Callable[[Holder | None], None]:
    """What a job's progress says while a command holds its run folder (a cancel ends the wait)."""

    def told(holder: Holder | None) -> None:
        if cancelled():
            raise _JobCancelled("cancelled while waiting for the run folder")
        who = holder.describe() if holder is not None else "another process"
        progress({"stage": "waiting for the run folder", "holder": who})

    return told


def score_summary(row: ScoreRow, reused: bool) -> dict[str, Any]:
    """A score row as a job's result gives it: everything but the judgments (the latent's record has them)."""
    return {
        "scorer": row.scorer,
        "status": row.status,
        "metrics": row.metrics,
        "n_examples": row.n_examples,
        "n_failed": row.n_failed,
        "judge_model": row.judge_model,
        "explanation": row.explanation,
        "usage": None if row.usage is None else asdict(row.usage),
        "error": _last_line(row.error) if row.error else "",
        "reused": reused,
    }


class LogIndex:
    """A run's two logs in memory: each latent's current explanation row, and every score row without its
    judgments (by the byte offset where the full row is), keyed for the 'already scored?' question. Latents
    are named by (hookpoint, index)."""

    def __init__(self, files: RunFiles):
        self.files = files
        self.explanations: dict[LatentId, ExplanationRow] = {}
        self._finished: dict[tuple[LatentId, str, str, str | None], int] = {}  # -> offset of the newest ok row
        self._rows: dict[int, ScoreRow] = {}  # offset -> the row without judgments
        self._by_latent: dict[LatentId, list[int]] = {}
        self._ends = {"explanations": 0, "scores": 0}
        self._default = ""

    def _unit(self, row: ExplanationRow | ScoreRow) -> LatentId:
        return LatentId(row.hookpoint or self._default, row.latent)

    def _start(self, name: str, path: Path) -> int:
        size = path.stat().st_size if path.exists() else 0
        if size < self._ends[name]:  # cut (a torn line repaired) or replaced: read it all again
            if name == "scores":
                self._finished.clear()
                self._rows.clear()
                self._by_latent.clear()
            else:
                self.explanations.clear()
            self._ends[name] = 0
        return size

    def refresh(self) -> None:
        """Read what was appended to the logs since the last look (by this service or anyone else)."""
        if not self._default:  # a row that names no hookpoint is the run's, when it has one
            hookpoints = list(hookpoint_folders(self.files.cache) or {})
            self._default = hookpoints[0] if len(hookpoints) == 1 else ""
        if self._start("explanations", self.files.explanations) > self._ends["explanations"]:
            for _, end, data in scan_jsonl(self.files.explanations, self._ends["explanations"]):
                explanation = ExplanationRow.from_json(data)
                self.explanations[self._unit(explanation)] = explanation
                self._ends["explanations"] = end
        if self._start("scores", self.files.scores) > self._ends["scores"]:
            for offset, end, data in scan_jsonl(self.files.scores, self._ends["scores"]):
                row = ScoreRow.from_json({**data, "judgments": None})  # kept in the log, read when asked for
                unit = self._unit(row)
                self._rows[offset] = row
                self._by_latent.setdefault(unit, []).append(offset)
                if row.status == "ok" and not row.control:  # a control scored another latent's label
                    self._finished[(unit, row.scorer, row.explanation or "", row.judge_model)] = offset
                self._ends["scores"] = end

    def finished(self, latent: LatentId, scorer: str, text: str, judge_model: str | None) -> ScoreRow | None:
        offset = self._finished.get((latent, scorer, text, judge_model))
        return None if offset is None else self._rows[offset]

    async def score_rows(self, latent: LatentId) -> list[ScoreRow]:
        """Every score row of the latent, oldest first, with its judgments (read from the log, in a thread)."""
        offsets = list(self._by_latent.get(latent, []))

        def read() -> list[ScoreRow]:
            return [ScoreRow.from_json(read_jsonl_at(self.files.scores, o)) for o in offsets]

        return await asyncio.to_thread(read)

    def counts(self) -> dict[str, Any]:
        explained = sum(1 for r in self.explanations.values() if r.status == "ok")
        scored: dict[str, int] = {}
        for (_, scorer, _, _), _ in self._finished.items():
            scored[scorer] = scored.get(scorer, 0) + 1
        return {"explained": explained, "score_rows": len(self._rows), "finished_scores": scored}


class ServedRun:
    def __init__(self, name: str, folder: Path, *, response_cache: str | None = None):
        self.name = name
        self.files = RunFiles(folder)
        self.config, self.resolved = load_config(self.files.config)
        if response_cache is not None:
            self.config.response_cache_path = response_cache
        self.metas: dict[str, CacheMeta] | None = self._finished_metas()
        self.index = LogIndex(self.files)
        self._prepared = False
        self._cache: HookpointCaches | None = None
        self._open: OpenRun | None = None
        self._loading = asyncio.Lock()
        self._locks: weakref.WeakValueDictionary[Any, asyncio.Lock] = weakref.WeakValueDictionary()
        self._later: asyncio.Task[None] | None = None  # the rebuild waiting for the run to be quiet
        self._rebuilding: asyncio.Future[Any] | None = None
        self._write_lock = asyncio.Lock()
        self.folder_lock = FolderLock(self.files.folder, command=f"{command_line()} (HTTP service jobs)")
        self._taking = asyncio.Lock()
        self._pending = False
        self._changed_at = 0.0
        self._rebuild_seconds = 0.0

    def _finished_metas(self) -> dict[str, CacheMeta] | None:
        """Each hookpoint's cache metadata, once every hookpoint's cache is finished (else None)."""
        return read_metas(self.files.cache) if cache_complete(self.files.cache) else None

    def require_cache(self) -> dict[str, CacheMeta]:
        """Each hookpoint's cache metadata, in the run's order."""
        if self.metas is None:
            self.metas = self._finished_metas()
        if self.metas is None:
            raise RequestError(
                f"run {self.name!r} has no finished activation cache yet (run `autointerp cache` on it)", status=409
            )
        return self.metas

    def unit(self, latent: int, hookpoint: str | None) -> LatentId:
        """The latent as (hookpoint, index): `hookpoint` None is the run's only one; a run of several must be
        told which, and a name it does not have is refused with the names it has."""
        metas = self.require_cache()
        names = list(metas)
        if hookpoint is None:
            if len(names) > 1:
                raise RequestError(
                    f"run {self.name!r} has {len(names)} hookpoints: name one with ?hookpoint= ({', '.join(names)})",
                    field="hookpoint",
                )
            hookpoint = names[0]
        elif hookpoint not in metas:
            raise RequestError(
                f"run {self.name!r} has no hookpoint {hookpoint[:200]!r}; it has {', '.join(names)}",
                field="hookpoint",
                status=404,
            )
        return LatentId(hookpoint, int(latent))

    async def ready(self) -> LogIndex:
        """The run's log index, read in full on first use (in a thread: a long log takes a while); later
        refreshes read only what was appended. (A torn last line is cut by `writing`, under the lock: a
        command may be writing that line right now.)"""
        if not self._prepared:
            async with self._loading:
                if not self._prepared:
                    await asyncio.to_thread(self.index.refresh)
                    self._prepared = True
        return self.index

    @contextlib.asynccontextmanager
    async def writing(self, waiting: Callable[[Holder | None], None] | None = None) -> AsyncIterator[None]:
        """The run folder's lock, held while a job writes (shared by the jobs of this run in flight); while a
        command holds it, `waiting` is told who, and the job waits. On taking it, a torn last line of a log
        (a crash mid-write) is cut, so the next row starts on a line of its own."""
        async with self._taking:
            if not self.folder_lock.held:
                while not self.folder_lock.try_acquire():
                    if waiting is not None:
                        waiting(self.folder_lock.holder())
                    await asyncio.sleep(LOCK_POLL_S)
                try:
                    await asyncio.to_thread(self.files.prepare)
                except BaseException:  # cancelled meanwhile (a server stopping): let go of it again
                    self.folder_lock.release()
                    raise
            else:
                self.folder_lock.try_acquire()  # one more hold on it: never waits
        try:
            yield
        finally:
            self.folder_lock.release()

    async def cache(self) -> HookpointCaches:
        if self._cache is None:
            async with self._loading:
                if self._cache is None:
                    self.require_cache()
                    self._cache = await asyncio.to_thread(HookpointCaches, self.files.cache)
        return self._cache

    async def opened(self) -> OpenRun:
        """The run's tokenizer, sampler and scorers, loaded (in a thread) on first use."""
        if self._open is None:
            cache = await self.cache()
            async with self._loading:
                if self._open is None:
                    self._open = await asyncio.to_thread(OpenRun, self.files, self.config, cache=cache)
        return self._open

    def lock(self, key: Any) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def results_changed(self) -> None:
        """Rebuild the results tables soon: once the run is quiet, or after a while under steady load."""
        self._changed_at = time.monotonic()
        self._pending = True
        if self._later is None or self._later.done():
            self._later = asyncio.create_task(self._write_later())

    async def _write_later(self) -> None:
        first = time.monotonic()
        while True:
            quiet = time.monotonic() - self._changed_at
            if quiet >= RESULTS_QUIET or time.monotonic() - first >= max(RESULTS_EVERY, 10 * self._rebuild_seconds):
                break
            await asyncio.sleep(max(0.01, RESULTS_QUIET - quiet))
        await self.flush()
        if self._pending:  # jobs finished while the tables were being written
            self._later = asyncio.create_task(self._write_later())

    async def flush(self) -> None:
        """Rebuild the results tables now if jobs have finished since they were last written (one rebuild at
        a time: a rebuild runs in a thread, and is waited for even when the caller is cancelled meanwhile)."""
        async with self._write_lock:
            if self._rebuilding is not None and not self._rebuilding.done():
                await asyncio.shield(self._rebuilding)
            if not self._pending:
                return
            if not self.folder_lock.try_acquire():  # a command writes the folder: it rebuilds them when it ends
                self._changed_at = time.monotonic()  # and the rebuild is tried again shortly
                return
            self._pending = False
            start = time.monotonic()
            self._rebuilding = asyncio.ensure_future(
                asyncio.to_thread(write_results, self.files, self.config, self.resolved)
            )
            self._rebuilding.add_done_callback(lambda _: self.folder_lock.release())  # held until written
            try:
                await asyncio.shield(self._rebuilding)
            except Exception:  # noqa: BLE001 - the logs are the record; the tables are rebuilt next time
                log.exception("could not rebuild the results tables of run %s", self.name)
            self._rebuild_seconds = time.monotonic() - start

    async def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._later
        await self.flush()

    def summary(self) -> dict[str, Any]:
        c = self.config
        metas = self.metas or {}
        return {
            "name": self.name,
            "model": self.resolved.get("model", c.model),
            "dictionary": self.resolved.get("dictionary", c.dictionary),
            "hookpoint": self.resolved.get("hookpoint", c.hookpoint),
            "hookpoints": {hp: m.num_latents for hp, m in metas.items()},
            "num_latents": sum(m.num_latents for m in metas.values()) if metas else None,
            "cached": bool(metas),
            "judge": c.judge,
            "explainer": c.explainer_model,
            "scorers": c.scorers,
            "results": self.files.results.exists(),
        }


class Judges:
    """Judges by name, made once per process (in a thread: a local model takes seconds to load) and shared.

    `backends` maps names to ready judges the service uses instead of loading a model of that name (tests
    hand it scripted judges, the bench an instant one); they are wrapped like any other, response cache
    included.
    """

    def __init__(self, backends: Mapping[str, BackendFactory] | None = None):
        self._backends = dict(backends or {})
        self._made: dict[tuple[Any, ...], Judge] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    async def get(self, name: str, config: RunConfig, role: Role = "judge") -> Judge:
        key = (name, JudgeSettings.of(config, role))  # runs that agree on these share one judge
        judge = self._made.get(key)
        if judge is None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                judge = self._made.get(key)
                if judge is None:
                    judge = await asyncio.to_thread(self._make, name, config, role)
                    try:
                        await check_judge_ready(judge)  # an HTTP judge that cannot be reached fails the job now
                    except BaseException:
                        await judge.aclose()  # and the next job tries again
                        raise
                    self._made[key] = judge
        return judge

    def _make(self, name: str, config: RunConfig, role: Role) -> Judge:
        factory = self._backends.get(name)
        return make_judge(name, config, backend=factory() if factory is not None else None, role=role)

    async def aclose(self) -> None:
        for judge in self._made.values():
            try:
                await judge.aclose()
            except Exception:  # noqa: BLE001 - closing the others matters more
                log.exception("could not close a judge")
        self._made.clear()


class ServedRuns:
    """Every run folder directly under `root`, and the jobs' work on them."""

    def __init__(
        self,
        root: Path,
        *,
        allowed_judges: tuple[str, ...] = (),
        backends: Mapping[str, BackendFactory] | None = None,
        response_cache: str | None = None,
        max_explanation_chars: int = 1000,
    ):
        self.root = Path(root).resolve()
        self.allowed_judges = tuple(allowed_judges)
        self.response_cache = response_cache
        self.max_explanation_chars = max_explanation_chars
        self.judges = Judges(backends)
        self._runs: dict[str, ServedRun] = {}

    # -- finding runs -------------------------------------------------------------------------------

    def get(self, name: str) -> ServedRun:
        """The served run of that name (BadName, NotFound when there is none; RequestError when unreadable)."""
        folder = run_folder(self.root, name)
        run = self._runs.get(name)
        if run is None or run.files.folder != folder:
            try:
                run = ServedRun(name, folder, response_cache=self.response_cache)
            except ConfigError as e:
                raise RequestError(f"run {name!r} cannot be read: {e}", status=409) from None
            self._runs[name] = run
        return run

    async def listing(self) -> list[dict[str, Any]]:
        out = []
        # the folder scan in a thread; the ServedRun objects (with their locks) only ever on the event loop
        for name, _ in await asyncio.to_thread(list_runs, self.root):
            try:
                out.append(self.get(name).summary())
            except (NotFound, RequestError):
                continue
        return out

    def judges_for(self, run: ServedRun) -> list[str]:
        """The judges a request on this run may name: the run's own, and those the server was told to allow."""
        return list(dict.fromkeys([run.config.judge, run.config.explainer_model, *self.allowed_judges]))

    # -- checking requests (before a job is queued) -------------------------------------------------

    async def check_latent(self, run: ServedRun, latent: int, hookpoint: str | None = None) -> LatentId:
        """A latent a job can work on: of one of the run's hookpoints, in range, and firing often enough to
        have a record."""
        unit = self.check_latent_range(run, latent, hookpoint)
        caches = await run.cache()
        cache = await asyncio.to_thread(caches.open, unit.hookpoint)
        fired = int(cache.state.fire_windows[latent])
        at = f" at {unit.hookpoint}" if len(caches) > 1 else ""
        if fired < run.config.sampling.min_examples:
            raise RequestError(
                f"latent {latent}{at} fires in {fired} windows of run {run.name!r}, fewer than its min_examples "
                f"({run.config.sampling.min_examples}): it has no record to explain or score",
                field="latent",
            )
        return unit

    def _judge(self, run: ServedRun, name: str | None, default: str, field: str) -> str:
        name = default if name is None else name
        allowed = self.judges_for(run)
        if name not in allowed:
            raise RequestError(
                f"{field} {name[:100]!r} is not served for run {run.name!r}; allowed: {', '.join(allowed)}", field
            )
        return name

    def score_request(
        self,
        run: ServedRun,
        explanation: str,
        scorers: list[str] | None,
        judge: str | None,
        hookpoint: str | None = None,
    ) -> dict[str, Any]:
        """The request as the job will run it, with every default filled in (so identical work looks identical)."""
        text = explanation.strip()
        if not text:
            raise RequestError("explanation: must not be empty", "explanation")
        if len(text) > self.max_explanation_chars:
            raise RequestError(
                f"explanation: at most {self.max_explanation_chars} characters, got {len(text)}", "explanation"
            )
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text):
            raise RequestError("explanation: must be one line of text, without control characters", "explanation")
        names = list(dict.fromkeys(run.config.scorers if scorers is None else scorers))
        if not names or len(names) > MAX_SCORERS:
            raise RequestError(f"scorers: give 1 to {MAX_SCORERS} scorer names", "scorers")
        unknown = [n for n in names if find_scorer(n) is None]
        if unknown:
            shown = ", ".join(repr(n[:40]) for n in unknown[:5])
            raise RequestError(f"scorers: unknown {shown}; available: {', '.join(scorer_names())}", "scorers")
        request = {"explanation": text, "scorers": names, "judge": self._judge(run, judge, run.config.judge, "judge")}
        return self._at(run, request, hookpoint)

    def explain_request(self, run: ServedRun, explainer: str | None, hookpoint: str | None = None) -> dict[str, Any]:
        request = {"explainer": self._judge(run, explainer, run.config.explainer_model, "explainer")}
        return self._at(run, request, hookpoint)

    @staticmethod
    def _at(run: ServedRun, request: dict[str, Any], hookpoint: str | None) -> dict[str, Any]:
        """The request with its hookpoint, in a run of several (in a run of one it is implied, so a request
        that names it looks the same as one that does not, and as requests made before runs had several)."""
        unit = run.unit(0, hookpoint)
        return {**request, "hookpoint": unit.hookpoint} if len(run.require_cache()) > 1 else request

    # -- reading ------------------------------------------------------------------------------------

    async def latent_record(self, run: ServedRun, latent: int, hookpoint: str | None = None) -> dict[str, Any]:
        """What the service knows of one latent: statistics, the examples of every split with activations,
        the current explanation row, and every score row (any label) with the judge's answers."""
        unit = self.check_latent_range(run, latent, hookpoint)
        opened = await run.opened()
        index = await run.ready()
        index.refresh()
        sampler = await asyncio.to_thread(opened.samplers.__getitem__, unit.hookpoint)
        stats = sampler.cache.stats(latent)
        record: dict[str, Any] | None = None
        reason = ""
        try:
            built = await asyncio.to_thread(sampler.record, latent)
            record = {
                split: [vars(e) for e in getattr(built, split)]
                for split in ("train", "test", "negatives", "train_negatives", "validation", "validation_negatives")
            }
        except NotEnoughExamples as e:
            reason = str(e)
        explanation = index.explanations.get(unit)
        return {
            "run": run.name,
            "latent": latent,
            "hookpoint": unit.hookpoint,
            "stats": {**vars(stats), "frequency": stats.frequency},
            "examples": record,
            "no_examples_because": reason or None,
            "explanation": explanation.to_json() if explanation is not None else None,
            "scores": [r.to_json() for r in await index.score_rows(unit)],
        }

    def check_latent_range(self, run: ServedRun, latent: int, hookpoint: str | None = None) -> LatentId:
        unit = run.unit(latent, hookpoint)
        metas = run.require_cache()
        n = metas[unit.hookpoint].num_latents
        if not 0 <= latent < n:
            at = f" at {unit.hookpoint}" if len(metas) > 1 else ""
            raise RequestError(
                f"latent {latent} is out of range: run {run.name!r} has {n} latents{at} (0..{n - 1})",
                field="latent",
                status=404,
            )
        return unit

    # -- running jobs -------------------------------------------------------------------------------

    async def execute(self, job: Job, progress: Progress, cancelled: Cancelled = lambda: False) -> Outcome:
        """Run the job; `cancelled()` turns true when it is asked to stop: it then stops before the next
        row it would write (a row being written is finished: rows are whole or absent)."""
        try:
            run = self.get(job.run)
            progress({"stage": "opening the run"})
            opened = await run.opened()
            await run.ready()
            if job.kind == "score":
                return await self._score(run, opened, job, progress, cancelled)
            if job.kind == "explain":
                return await self._explain(run, opened, job, progress, cancelled)
            return "failed", None, f"unknown job kind {job.kind!r}"
        except _JobCancelled as e:
            return "cancelled", None, str(e)
        except (NotFound, RequestError, NotEnoughExamples, AutointerpError) as e:
            return "failed", None, f"{type(e).__name__}: {e}"

    async def _score(
        self, run: ServedRun, opened: OpenRun, job: Job, progress: Progress, cancelled: Cancelled
    ) -> Outcome:
        text, names, judge_name = job.request["explanation"], job.request["scorers"], job.request["judge"]
        unit = run.unit(job.latent, job.request.get("hookpoint"))
        scorers = opened.scorers(names)
        judge = None
        if any(s.needs_judge for s in scorers):
            progress({"stage": "loading the judge", "judge": judge_name})
            judge = await self.judges.get(judge_name, run.config)
        rows: dict[str, tuple[ScoreRow, bool]] = {}

        def reuse() -> list[str]:
            """Take the finished scores the log holds; the scorers still to run."""
            run.index.refresh()
            for scorer in scorers:
                done = run.index.finished(unit, scorer.name, text, scorer.judge_model(judge))
                if done is not None:
                    rows[scorer.name] = (done, True)
            return [n for n in names if n not in rows]

        if reuse():  # only a job with something to write takes the folder (a reused score is read, never written)
            if cancelled():
                raise _JobCancelled("cancelled before it wrote anything")
            async with run.writing(_waiting(progress, cancelled)), run.lock(("score", unit, text, judge_name)):
                todo = reuse()  # again, under the locks: a command or another job may have scored it meanwhile
                for i, name in enumerate(todo, 1):
                    if cancelled():
                        break
                    progress({"stage": "scoring", "scorer": name, "step": i, "steps": len(todo)})
                    (row,) = await score_label(opened, unit, text, [name], judge)
                    rows[name] = (row, False)
                if todo:
                    run.index.refresh()
                    run.results_changed()
        result = {"scores": [score_summary(*rows[n]) for n in names if n in rows]}
        if len(rows) < len(names):  # cancelled: the scorers it got to have their rows, the others none
            left = [n for n in names if n not in rows]
            return "cancelled", result, f"cancelled before scoring with {', '.join(left)}"
        errors = [f"{n}: {_last_line(rows[n][0].error)}" for n in names if rows[n][0].status != "ok"]
        return ("failed" if errors else "done"), result, "; ".join(errors) or None

    async def _explain(
        self, run: ServedRun, opened: OpenRun, job: Job, progress: Progress, cancelled: Cancelled
    ) -> Outcome:
        name = job.request["explainer"]
        unit = run.unit(job.latent, job.request.get("hookpoint"))
        explainer = None
        if name != TOKENS_EXPLAINER:  # the tokens explainer asks no LLM
            progress({"stage": "loading the explainer", "explainer": name})
            explainer = await self.judges.get(name, run.config, "explainer")
        model = TOKENS_EXPLAINER if explainer is None else explainer.model
        chooser = opened.chooser() if explainer is not None else None
        judge = None
        if chooser is not None and chooser.needs_judge:
            judge = await self.judges.get(run.config.judge, run.config)
        if cancelled():
            raise _JobCancelled("cancelled before it wrote anything")
        async with run.writing(_waiting(progress, cancelled)), run.lock(("explain", unit)):
            run.index.refresh()
            current = run.index.explanations.get(unit)
            reused = current is not None and current.status == "ok" and current.explainer_model == model
            if reused:
                row = current
            elif cancelled():
                raise _JobCancelled("cancelled before it wrote anything")
            else:
                progress({"stage": "explaining"})
                row = await explain_latent(opened, unit, explainer, judge)
                run.index.refresh()
                run.results_changed()
        assert row is not None
        result = {
            "explanation": row.explanation,
            "status": row.status,
            "explainer_model": row.explainer_model,
            "usage": None if row.usage is None else asdict(row.usage),
            "failures": row.failures,
            "candidates": None if row.candidates is None else [asdict(c) for c in row.candidates],
            "reused": reused,
        }
        if row.status != "ok":
            return "failed", result, _last_line(row.error)
        return "done", result, None

    async def aclose(self) -> None:
        for run in self._runs.values():
            await run.close()
        await self.judges.aclose()
