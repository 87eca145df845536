"""How the service answers an error: JSON `{"error": message, "field": name}`, where `field` names the
part of the request that is wrong (a body field, a path or query parameter, a header) whenever there is
one; and the handlers that turn each error of the layers below into that answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from autointerp.serve.jobs import IdempotencyConflict
from autointerp.serve.paths import BadName, NotFound
from autointerp.serve.queue import QueueFull
from autointerp.serve.runs import RequestError


class ApiError(HTTPException):
    """An error answered as JSON; a subclass of HTTPException so FastAPI passes it through body parsing."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.field = field


def error_response(
    status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _field(loc: Any) -> str | None:
    parts = [str(p) for p in (loc or ()) if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else None)


async def _http_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    return error_response(e.status_code, str(e.detail), getattr(e, "field", None), e.headers)


async def _invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    errors = [
        {"field": _field(err.get("loc")), "message": err.get("msg", "invalid")}
        for err in e.errors()  # only locations and messages: the input may be large, or a secret
    ]
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return JSONResponse({"error": message, "field": first["field"], "errors": errors}, status_code=422)


async def _refused(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestError)
    return error_response(e.status, str(e), e.field)


async def _bad_name(_: Request, e: Exception) -> JSONResponse:
    return error_response(400, str(e), "run")


async def _not_found(_: Request, e: Exception) -> JSONResponse:
    return error_response(404, str(e), "run")


async def _conflict(_: Request, e: Exception) -> JSONResponse:
    return error_response(422, str(e), "Idempotency-Key")


async def _full(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, QueueFull)
    return error_response(429, str(e), None, {"Retry-After": str(e.retry_after)})


def install_handlers(app: FastAPI) -> None:
    for kind, handler in (
        (HTTPException, _http_error),
        (RequestValidationError, _invalid),
        (RequestError, _refused),
        (BadName, _bad_name),
        (NotFound, _not_found),
        (IdempotencyConflict, _conflict),
        (QueueFull, _full),
    ):
        app.add_exception_handler(kind, handler)
