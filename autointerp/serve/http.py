"""The app: one `Service` (service.py) behind the routers (routes.py), the error handlers (errors.py)
and the middleware (guard.py, CORS when asked for); and `serve`, which runs it with uvicorn."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from autointerp import __version__
from autointerp.serve.errors import install_handlers
from autointerp.serve.guard import Guard
from autointerp.serve.neuronpedia import neuronpedia_router
from autointerp.serve.routes import ROUTERS
from autointerp.serve.runs import BackendFactory
from autointerp.serve.service import Service
from autointerp.serve.settings import ServeSettings


def create_app(settings: ServeSettings, *, backends: dict[str, BackendFactory] | None = None) -> FastAPI:
    """The service for `settings`; `backends` are judges by name used instead of loading models of those names."""
    service = Service(settings, backends=backends)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    api = FastAPI(
        title="autointerp",
        version=__version__,
        description="Explain and score the latents of the run folders under one directory.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api.state.service = service
    api.state.runs, api.state.queue = service.runs, service.queue
    api.include_router(neuronpedia_router(settings, service.runs.judges))  # Neuronpedia's autointerp API, under /v1
    if settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )
    api.add_middleware(Guard, limit=settings.max_body_bytes)
    install_handlers(api)
    for router in ROUTERS:
        api.include_router(router)
    return api


def serve(
    settings: ServeSettings, *, backends: dict[str, BackendFactory] | None = None, log_level: str | None = None
) -> None:
    """Run the service with uvicorn until it is stopped (Ctrl-C or SIGTERM end it cleanly); `log_level`
    None: the settings' own."""
    import uvicorn

    api = create_app(settings, backends=backends)
    config = uvicorn.Config(
        api,
        host=settings.host,
        port=settings.port,
        log_level=log_level or settings.log_level,
        root_path=settings.root_path,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
