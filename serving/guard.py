"""ASGI middleware in front of the service: a body-size limit and an optional API key.

Health, readiness, metrics and the OpenAPI document stay open, so probes and scrapers
need no key; only the scoring endpoints are protected.
"""

from __future__ import annotations

import json
from typing import Any

PROTECTED = (
    "/predict", "/predict_shadow", "/predict_columns", "/arrow/predict", "/explain",
    "/score_vitals",
)  # fmt: skip


class Guard:
    """ASGI middleware: request size limit, then the optional API key (loopback default off)."""

    def __init__(self, app: Any, api_key: str | None, max_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                await _reply(send, 413, f"request body over {self.max_bytes} bytes")
                return
            given = headers.get(b"x-api-key", b"").decode(errors="replace")
            if self.api_key and scope["path"] in PROTECTED and given != self.api_key:
                await _reply(send, 401, "missing or wrong X-API-Key header")
                return
        await self.app(scope, receive, send)


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
