"""The HTTP routes, in three routers over the app's one `Service` (service.py): the service itself (health,
the OpenAPI spec and its docs page), the runs (their config, latents and report), and the jobs (queue,
follow, cancel).

Every route but /health needs an API key. Responses are built as JSON directly (no response models to
validate against) since a latent's record can be large and the bench holds the service to a few
milliseconds a request. (No `from __future__ import annotations` here: FastAPI reads the routes'
annotations at run time.)
"""

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autointerp import __version__
from autointerp.serve.errors import ApiError
from autointerp.serve.jobs import FINISHED, Job
from autointerp.serve.paths import file_within
from autointerp.serve.queue import parse_event_id
from autointerp.serve.service import Service

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# the report is static: it may run its own inline script and style, and load nothing from anywhere
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


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


async def _service(request: Request) -> Service:  # async: FastAPI would run a plain def in a thread
    return request.app.state.service


async def _client(request: Request) -> str:
    service: Service = request.app.state.service
    return service.client(request.headers.get("authorization"))


Served = Annotated[Service, Depends(_service)]
Client = Annotated[str, Depends(_client)]
RunName = Annotated[str, Path(max_length=200, description="a run folder's name under the served directory")]
Latent = Annotated[int, Path(ge=0, le=2**31, description="the latent's index in the run's dictionary")]
Hookpoint = Annotated[
    str | None,
    Query(max_length=200, description="the latent's hookpoint, in a run of several (default: the run's only one)"),
]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _submitted(service: Service, request: Request, job: Job, created: bool) -> JSONResponse:
    headers = {"Location": f"{request.scope.get('root_path', '')}/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(service.job_json(job), status_code=202 if created else 200, headers=headers)


def _idempotency(key: str | None) -> str | None:
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "Idempotency-Key: 1 to 200 printable ASCII characters", "Idempotency-Key")
    return key


# -- the service ------------------------------------------------------------------------------------

service_routes = APIRouter()


@service_routes.get("/health", tags=["service"])
async def health() -> JSONResponse:
    """Whether the service answers (no key needed)."""
    return JSONResponse({"status": "ok", "version": __version__})


@service_routes.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, _: Client) -> JSONResponse:
    spec = request.app.openapi()
    prefix = request.scope.get("root_path", "")
    return JSONResponse({**spec, "servers": [{"url": prefix}]} if prefix else spec)


@service_routes.get("/docs", include_in_schema=False)
async def docs(request: Request, _: Client) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="autointerp")


# -- the runs ---------------------------------------------------------------------------------------

run_routes = APIRouter(tags=["runs"])


@run_routes.get("/runs")
async def list_runs(service: Served, _: Client) -> JSONResponse:
    """Every run folder served, with its model, dictionary, judge and scorers."""
    return JSONResponse({"runs": await service.runs.listing()})


@run_routes.get("/runs/{run}")
async def get_run(run: RunName, service: Served, _: Client) -> JSONResponse:
    """One run: its config.json, and how many latents are explained and scored."""
    served = service.runs.get(run)
    (await served.ready()).refresh()
    config = json.loads(served.files.config.read_text())
    return JSONResponse({**served.summary(), **served.index.counts(), "config": config})


@run_routes.get("/runs/{run}/latents/{latent}")
async def get_latent(
    run: RunName, latent: Latent, service: Served, _: Client, hookpoint: Hookpoint = None
) -> JSONResponse:
    """A latent's record: statistics, examples of each split with per-token activations, the current
    explanation, and every score with each judge answer."""
    runs = service.runs
    return JSONResponse(await runs.latent_record(runs.get(run), latent, hookpoint))


@run_routes.get("/runs/{run}/report", include_in_schema=False)
async def report_root(run: RunName, service: Served, _: Client) -> RedirectResponse:
    service.runs.get(run)
    return RedirectResponse("report/", status_code=307)  # relative: right behind a proxy's path prefix too


@run_routes.get("/runs/{run}/report/{path:path}")
async def report(run: RunName, path: str, service: Served, _: Client) -> Response:
    """The run's HTML report (built on first request, and again when its results have changed)."""
    folder = await service.report_folder(service.runs.get(run))
    target = file_within(folder, path or "index.html")
    return FileResponse(target, headers=REPORT_HEADERS)


# -- the jobs ---------------------------------------------------------------------------------------

job_routes = APIRouter(tags=["jobs"])


@job_routes.post("/runs/{run}/latents/{latent}/score", status_code=202)
async def score(
    request: Request,
    run: RunName,
    latent: Latent,
    body: ScoreBody,
    service: Served,
    who: Client,
    idempotency_key: IdempotencyKey = None,
    hookpoint: Hookpoint = None,
) -> JSONResponse:
    """Queue a job that scores `explanation` for the latent; answers at once with the job (202).
    A finished score of the same label by the same scorer and judge is reused, not paid for again."""
    runs = service.runs
    served = runs.get(run)
    key = _idempotency(idempotency_key)
    req = runs.score_request(served, body.explanation, body.scorers, body.judge, hookpoint)
    await runs.check_latent(served, latent, hookpoint)
    return _submitted(service, request, *service.queue.submit("score", run, latent, req, who, key))


@job_routes.post("/runs/{run}/latents/{latent}/explain", status_code=202)
async def explain(
    request: Request,
    run: RunName,
    latent: Latent,
    service: Served,
    who: Client,
    body: ExplainBody | None = None,
    idempotency_key: IdempotencyKey = None,
    hookpoint: Hookpoint = None,
) -> JSONResponse:
    """Queue a job that explains the latent (its label becomes the latent's current explanation);
    answers at once with the job (202). A current label by the same explainer is reused."""
    runs = service.runs
    served = runs.get(run)
    key = _idempotency(idempotency_key)
    req = runs.explain_request(served, body.explainer if body else None, hookpoint)
    await runs.check_latent(served, latent, hookpoint)
    return _submitted(service, request, *service.queue.submit("explain", run, latent, req, who, key))


@job_routes.get("/jobs")
async def list_jobs(
    service: Served,
    who: Client,
    status: Annotated[str | None, Query(pattern="^(queued|running|done|failed|cancelled)$")] = None,
    run: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """Your jobs, newest first."""
    jobs = service.store.list(who, status=status, run=run, limit=limit)
    return JSONResponse({"jobs": [service.job_json(j) for j in jobs]})


@job_routes.get("/jobs/{job_id}")
async def get_job(
    job_id: str,
    service: Served,
    who: Client,
    wait: Annotated[float, Query(ge=0, description="seconds to hold the answer, up to the server's limit")] = 0,
) -> JSONResponse:
    """A job: status, progress, result or error. `wait=S` holds the answer until the job has finished
    or S seconds have passed."""
    longest = service.settings.max_wait_seconds  # the server's own bound: checked here, answered as any other
    if wait > longest:
        message = f"Input should be less than or equal to {longest:g}"
        raise RequestValidationError([{"type": "less_than_equal", "loc": ("query", "wait"), "msg": message}])
    job = service.own_job(job_id, who)
    if wait > 0 and job.status not in FINISHED:
        job = await service.queue.wait(job.id, who, wait) or job
    return JSONResponse(service.job_json(job))


@job_routes.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, service: Served, who: Client) -> JSONResponse:
    """Cancel a job. A queued job never starts: it is answered `cancelled` (200). A running job stops
    once the work in flight is written (a scorer's row is written whole or not at all): it is answered
    still `running` (202) and becomes `cancelled`; follow it to see when. A finished job is answered as
    it is (200), so a repeated DELETE does no harm."""
    service.own_job(job_id, who)
    job = service.queue.cancel(job_id, who)
    assert job is not None
    return JSONResponse(service.job_json(job), status_code=202 if job.status == "running" else 200)


@job_routes.get("/jobs/{job_id}/events")
async def job_events(
    job_id: str,
    service: Served,
    who: Client,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
) -> StreamingResponse:
    """Server-Sent Events: a `progress` event with the job now and after each change, a comment every
    15 s of quiet, and a last `done` event once the job has finished (done, failed or cancelled).
    Each event has an id: a client that reconnects with `Last-Event-ID` is sent only what came after
    that event (nothing at all when that was the last one)."""
    service.own_job(job_id, who)
    after = parse_event_id(last_event_id)

    async def stream() -> Any:
        async for item in service.queue.follow(job_id, who, after=after):
            if item is None:
                yield ": keep-alive\n\n"
                continue
            job, event_id = item
            name = "done" if job.status in FINISHED else "progress"
            yield f"id: {event_id}\nevent: {name}\ndata: {json.dumps(service.job_json(job))}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


ROUTERS = (service_routes, run_routes, job_routes)
