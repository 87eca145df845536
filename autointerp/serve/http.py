"""The HTTP routes (FastAPI), their errors, and the middleware in front of them.

Every route but /health needs an API key. Errors are JSON `{"error": message, "field": name}`, where
`field` names the part of the request that is wrong (a body field, a path or query parameter, a
header) whenever there is one. Responses are built as JSON directly (no response models to validate
against) since a latent's record can be large and the bench holds the service to a few milliseconds a
request. (No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run
time, and the aliases they use are made inside `create_app`.)
"""

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autointerp import __version__
from autointerp.report import ReportError, build_report
from autointerp.serve.auth import LOCAL_CLIENT
from autointerp.serve.jobs import FINISHED, IdempotencyConflict, Job, JobStore
from autointerp.serve.paths import BadName, NotFound, file_within, inside
from autointerp.serve.queue import JobQueue, QueueFull, parse_event_id
from autointerp.serve.runs import BackendFactory, RequestError, ServedRun, ServedRuns
from autointerp.serve.settings import ServeSettings

log = logging.getLogger("autointerp.serve")

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# the report is static: it may run its own inline script and style, and load nothing from anywhere
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class ApiError(HTTPException):
    """An error answered as JSON; a subclass of HTTPException so FastAPI passes it through body parsing."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.field = field


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    explanation: str = Field(
        max_length=100_000, description="the label to score (one line; the server's limit is usually 1000 chars)"
    )
    scorers: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=16, description="scorer names (default: the run's scorers)"
    )
    judge: str | None = Field(None, max_length=200, description="judge name (default: the run's judge)")


class ExplainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    explainer: str | None = Field(None, max_length=200, description="explainer name (default: the run's)")


def _error(
    status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _field(loc: Any) -> str | None:
    parts = [str(p) for p in (loc or ()) if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else None)


class Guard:
    """Raw ASGI middleware: refuses bodies over the limit (413, by Content-Length or as they stream in) and
    marks every answer not to be sniffed or cached."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                response = _error(413, f"request body over the limit of {self.limit} bytes", "body")
                return await response(scope, receive, send)
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"request body over the limit of {self.limit} bytes", "body")
            return message

        async def marked(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited, marked)


def create_app(settings: ServeSettings, *, backends: dict[str, BackendFactory] | None = None) -> FastAPI:
    """The service for `settings`; `backends` are judges by name used instead of loading models of those names."""
    settings.check()
    runs = ServedRuns(
        settings.runs,
        allowed_judges=settings.allowed_judges,
        backends=backends,
        response_cache=settings.response_cache,
        max_explanation_chars=settings.max_explanation_chars,
    )
    store = JobStore(settings.jobs_path)
    queue = JobQueue(store, runs.execute, workers=settings.workers, max_queue=settings.max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        pruned = store.prune(settings.keep_jobs_days * 86400)
        resumed = await queue.start()
        log.info("serving %s: %d jobs resumed, %d old jobs forgotten", runs.root, resumed, pruned)
        try:
            yield
        finally:
            await queue.stop()
            await runs.aclose()
            store.close()

    api = FastAPI(
        title="autointerp",
        version=__version__,
        description="Explain and score the latents of the run folders under one directory.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api.state.runs, api.state.queue = runs, queue
    if settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )
    api.add_middleware(Guard, limit=settings.max_body_bytes)

    # -- errors -------------------------------------------------------------------------------------

    @api.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "field", None), e.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(err.get("loc")), "message": err.get("msg", "invalid")}
            for err in e.errors()  # only locations and messages: the input may be large, or a secret
        ]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return JSONResponse({"error": message, "field": first["field"], "errors": errors}, status_code=422)

    @api.exception_handler(RequestError)
    async def refused(_: Request, e: RequestError) -> JSONResponse:
        return _error(e.status, str(e), e.field)

    @api.exception_handler(BadName)
    async def bad_name(_: Request, e: BadName) -> JSONResponse:
        return _error(400, str(e), "run")

    @api.exception_handler(NotFound)
    async def not_found(_: Request, e: NotFound) -> JSONResponse:
        return _error(404, str(e), "run")

    @api.exception_handler(IdempotencyConflict)
    async def conflict(_: Request, e: IdempotencyConflict) -> JSONResponse:
        return _error(422, str(e), "Idempotency-Key")

    @api.exception_handler(QueueFull)
    async def full(_: Request, e: QueueFull) -> JSONResponse:
        return _error(429, str(e), None, {"Retry-After": str(e.retry_after)})

    # -- auth ---------------------------------------------------------------------------------------

    async def client(request: Request) -> str:  # async: FastAPI would run a plain def in a thread
        if settings.keys is None:
            return LOCAL_CLIENT
        found = settings.keys.client(request.headers.get("authorization"))
        if found is None:
            raise ApiError(
                401,
                "an API key is needed: send the header 'Authorization: Bearer KEY'",
                "Authorization",
                {"WWW-Authenticate": 'Basic realm="autointerp", charset="UTF-8"'},
            )
        return found

    Client = Annotated[str, Depends(client)]
    RunName = Annotated[str, Path(max_length=200, description="a run folder's name under the served directory")]
    Latent = Annotated[int, Path(ge=0, le=2**31, description="the latent's index in the run's dictionary")]
    Hookpoint = Annotated[
        str | None,
        Query(
            max_length=200,
            description="the latent's hookpoint, in a run of several (default: the run's only one)",
        ),
    ]

    def job_json(job: Job) -> dict[str, Any]:
        return job.to_json(queue.progress(job.id))

    def own_job(job_id: str, who: str) -> Job:
        job = queue.get(job_id, who) if _JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r}", "job_id")
        return job

    def submitted(request: Request, job: Job, created: bool) -> JSONResponse:
        headers = {"Location": f"{request.scope.get('root_path', '')}/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(job_json(job), status_code=202 if created else 200, headers=headers)

    def idempotency(key: str | None) -> str | None:
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(422, "Idempotency-Key: 1 to 200 printable ASCII characters", "Idempotency-Key")
        return key

    # -- routes -------------------------------------------------------------------------------------

    @api.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """Whether the service answers (no key needed)."""
        return JSONResponse({"status": "ok", "version": __version__})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, _: Client) -> JSONResponse:
        spec = api.openapi()
        prefix = request.scope.get("root_path", "")
        return JSONResponse({**spec, "servers": [{"url": prefix}]} if prefix else spec)

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request, _: Client) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="autointerp")

    @api.get("/runs", tags=["runs"])
    async def list_runs(_: Client) -> JSONResponse:
        """Every run folder served, with its model, dictionary, judge and scorers."""
        return JSONResponse({"runs": await runs.listing()})

    @api.get("/runs/{run}", tags=["runs"])
    async def get_run(run: RunName, _: Client) -> JSONResponse:
        """One run: its config.json, and how many latents are explained and scored."""
        served = runs.get(run)
        (await served.ready()).refresh()
        config = json.loads(served.files.config.read_text())
        return JSONResponse({**served.summary(), **served.index.counts(), "config": config})

    @api.get("/runs/{run}/latents/{latent}", tags=["runs"])
    async def get_latent(run: RunName, latent: Latent, _: Client, hookpoint: Hookpoint = None) -> JSONResponse:
        """A latent's record: statistics, examples of each split with per-token activations, the current
        explanation, and every score with each judge answer."""
        return JSONResponse(await runs.latent_record(runs.get(run), latent, hookpoint))

    @api.post("/runs/{run}/latents/{latent}/score", status_code=202, tags=["jobs"])
    async def score(
        request: Request,
        run: RunName,
        latent: Latent,
        body: ScoreBody,
        who: Client,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        hookpoint: Hookpoint = None,
    ) -> JSONResponse:
        """Queue a job that scores `explanation` for the latent; answers at once with the job (202).
        A finished score of the same label by the same scorer and judge is reused, not paid for again."""
        served = runs.get(run)
        key = idempotency(idempotency_key)
        req = runs.score_request(served, body.explanation, body.scorers, body.judge, hookpoint)
        await runs.check_latent(served, latent, hookpoint)
        return submitted(request, *queue.submit("score", run, latent, req, who, key))

    @api.post("/runs/{run}/latents/{latent}/explain", status_code=202, tags=["jobs"])
    async def explain(
        request: Request,
        run: RunName,
        latent: Latent,
        who: Client,
        body: ExplainBody | None = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        hookpoint: Hookpoint = None,
    ) -> JSONResponse:
        """Queue a job that explains the latent (its label becomes the latent's current explanation);
        answers at once with the job (202). A current label by the same explainer is reused."""
        served = runs.get(run)
        key = idempotency(idempotency_key)
        req = runs.explain_request(served, body.explainer if body else None, hookpoint)
        await runs.check_latent(served, latent, hookpoint)
        return submitted(request, *queue.submit("explain", run, latent, req, who, key))

    @api.get("/jobs", tags=["jobs"])
    async def list_jobs(
        who: Client,
        status: Annotated[str | None, Query(pattern="^(queued|running|done|failed|cancelled)$")] = None,
        run: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """Your jobs, newest first."""
        jobs = queue.store.list(who, status=status, run=run, limit=limit)
        return JSONResponse({"jobs": [job_json(j) for j in jobs]})

    @api.get("/jobs/{job_id}", tags=["jobs"])
    async def get_job(
        job_id: str,
        who: Client,
        wait: Annotated[float, Query(ge=0, le=settings.max_wait_seconds)] = 0,
    ) -> JSONResponse:
        """A job: status, progress, result or error. `wait=S` holds the answer until the job has finished
        or S seconds have passed."""
        job = own_job(job_id, who)
        if wait > 0 and job.status not in FINISHED:
            job = await queue.wait(job.id, who, wait) or job
        return JSONResponse(job_json(job))

    @api.delete("/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(job_id: str, who: Client) -> JSONResponse:
        """Cancel a job. A queued job never starts: it is answered `cancelled` (200). A running job stops
        once the work in flight is written (a scorer's row is written whole or not at all): it is answered
        still `running` (202) and becomes `cancelled`; follow it to see when. A finished job is answered as
        it is (200), so a repeated DELETE does no harm."""
        own_job(job_id, who)
        job = queue.cancel(job_id, who)
        assert job is not None
        return JSONResponse(job_json(job), status_code=202 if job.status == "running" else 200)

    @api.get("/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(
        job_id: str,
        who: Client,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: a `progress` event with the job now and after each change, a comment every
        15 s of quiet, and a last `done` event once the job has finished (done, failed or cancelled).
        Each event has an id: a client that reconnects with `Last-Event-ID` is sent only what came after
        that event (nothing at all when that was the last one)."""
        own_job(job_id, who)
        after = parse_event_id(last_event_id)

        async def stream() -> Any:
            async for item in queue.follow(job_id, who, after=after):
                if item is None:
                    yield ": keep-alive\n\n"
                    continue
                job, event_id = item
                name = "done" if job.status in FINISHED else "progress"
                yield f"id: {event_id}\nevent: {name}\ndata: {json.dumps(job_json(job))}\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @api.get("/runs/{run}/report", include_in_schema=False)
    async def report_root(run: RunName, _: Client) -> RedirectResponse:
        runs.get(run)
        return RedirectResponse("report/", status_code=307)  # relative: right behind a proxy's path prefix too

    @api.get("/runs/{run}/report/{path:path}", tags=["runs"])
    async def report(run: RunName, path: str, _: Client) -> Response:
        """The run's HTML report (built on first request, and again when its results have changed)."""
        folder = await ensure_report(runs.get(run))
        target = file_within(folder, path or "index.html")
        return FileResponse(target, headers=REPORT_HEADERS)

    async def ensure_report(served: ServedRun) -> FilePath:
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

    return api


def serve(
    settings: ServeSettings, *, backends: dict[str, BackendFactory] | None = None, log_level: str = "info"
) -> None:
    """Run the service with uvicorn until it is stopped (Ctrl-C or SIGTERM end it cleanly)."""
    import uvicorn

    api = create_app(settings, backends=backends)
    config = uvicorn.Config(
        api,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        root_path=settings.root_path,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
