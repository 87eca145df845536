"""The middleware in front of every route: bodies over the limit are refused (413, by Content-Length or as
they stream in), and every answer is marked not to be sniffed or cached."""

from __future__ import annotations

from typing import Any

from autointerp.serve.errors import ApiError, error_response


class Guard:
    """Raw ASGI middleware (see the module docstring)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                response = error_response(413, f"request body over the limit of {self.limit} bytes", "body")
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
