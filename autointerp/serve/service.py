"""The one object the routes work on: the served runs, the job table and queue, and the settings.

The routes (routes.py) are thin: they parse a request, ask this object, and answer. Made once per app
(`create_app`); started and stopped by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from autointerp.report import ReportError, build_report
from autointerp.serve.auth import LOCAL_CLIENT
from autointerp.serve.errors import ApiError
from autointerp.serve.jobs import Job, JobStore
from autointerp.serve.paths import inside
from autointerp.serve.queue import JobQueue
from autointerp.serve.runs import BackendFactory, ServedRun, ServedRuns
from autointerp.serve.settings import ServeSettings

log = logging.getLogger("autointerp.serve")

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class Service:
    def __init__(self, settings: ServeSettings, *, backends: dict[str, BackendFactory] | None = None):
        settings.check()
        self.settings = settings
        self.runs = ServedRuns(
            settings.runs,
            allowed_judges=settings.allowed_judges,
            backends=backends,
            response_cache=settings.response_cache,
            max_explanation_chars=settings.max_explanation_chars,
        )
        self.store = JobStore(settings.jobs_path)
        self.queue = JobQueue(self.store, self.runs.execute, workers=settings.workers, max_queue=settings.max_queue)

    async def start(self) -> None:
        pruned = self.store.prune(self.settings.keep_jobs_days * 86400)
        resumed = await self.queue.start()
        log.info("serving %s: %d jobs resumed, %d old jobs forgotten", self.runs.root, resumed, pruned)

    async def stop(self) -> None:
        await self.queue.stop()
        await self.runs.aclose()
        self.store.close()

    # -- who asks -----------------------------------------------------------------------------------

    def client(self, authorization: str | None) -> str:
        """The client id the request's key belongs to (every request's, with authentication off)."""
        if self.settings.keys is None:
            return LOCAL_CLIENT
        found = self.settings.keys.client(authorization)
        if found is None:
            raise ApiError(
                401,
                "an API key is needed: send the header 'Authorization: Bearer KEY'",
                "Authorization",
                {"WWW-Authenticate": 'Basic realm="autointerp", charset="UTF-8"'},
            )
        return found

    # -- jobs ---------------------------------------------------------------------------------------

    def job_json(self, job: Job) -> dict[str, Any]:
        return job.to_json(self.queue.progress(job.id))

    def own_job(self, job_id: str, who: str) -> Job:
        """The client's job of that id (404 for an id that is not one, or not theirs)."""
        job = self.queue.get(job_id, who) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r}", "job_id")
        return job

    # -- reports ------------------------------------------------------------------------------------

    async def report_folder(self, served: ServedRun) -> Path:
        """The run's report folder, (re)built first when its results are newer than it."""
        await served.flush()
        results = served.files.results
        if not results.exists():
            raise ApiError(404, f"run {served.name!r} has no results yet: nothing to report", "run")
        site = served.files.folder / "report"
        async with served.lock("report"):
            index = site / "index.html"
            if not index.exists() or index.stat().st_mtime < results.stat().st_mtime:
                opened = await served.opened()
                try:
                    await asyncio.to_thread(build_report, served.files.folder, decode=opened.decode, progress=False)
                except ReportError as e:
                    raise ApiError(404, str(e), "run") from None
        real = site.resolve()
        if not inside(real, served.files.folder):
            raise ApiError(400, "the run's report folder leads outside the run; it is not served", "run")
        return real
