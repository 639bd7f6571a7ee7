"""ASGI middleware in front of the service: body-size limit, content types, API key.

Every request body is hostile until proven otherwise. Before the application sees a
request to a scoring endpoint the guard checks, in this order:

1. the size: a declared ``Content-Length`` over the limit is refused at once (413), and
   the body is read here, counting bytes as they stream in, so a *chunked* body (no
   length declared) is refused (413) as soon as it passes the limit, never buffered
   whole;
2. the API key (``serving.api_key``), compared in constant time (401);
3. the content type: JSON endpoints take ``application/json`` only, the Arrow endpoint
   ``application/vnd.apache.arrow.stream`` only (415).

Health, readiness, metrics and the OpenAPI document stay open, so probes and scrapers
need no key. Answers are JSON ``{"error": ...}`` and never echo the request.

The docs page (``GET /``, Swagger UI on the OpenAPI document) is BentoML's own with its
Google Tag Manager snippet removed — a hospital's browser must not call a tracker — and
served with a Content-Security-Policy that allows this origin only, so nothing of a
later BentoML page can load from elsewhere either. Its scripts and styles are BentoML's
local ``static_content``: the page works without a network. The OpenAPI document's
description is Vigil's (:data:`DESCRIPTION`), not BentoML's default README, whose badge
images come from public hosts.
"""

from __future__ import annotations

import hmac
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
# Scoring endpoints and the content type each accepts.
PROTECTED: dict[str, str] = {
    "/predict": JSON, "/predict_shadow": JSON, "/predict_columns": JSON,
    "/arrow/predict": ARROW, "/explain": JSON, "/score_vitals": JSON,
}  # fmt: skip


# Same origin only (Swagger UI's inline bootstrap and styles, its data: icons).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src 'none'; object-src 'none'"
)
_TAG_MANAGER = re.compile(
    r"<!--\s*Google Tag Manager(?: \(noscript\))?\s*-->.*?"
    r"<!--\s*End Google Tag Manager(?: \(noscript\))?\s*-->",
    re.S,
)


DESCRIPTION = (
    "Vigil's deterioration-risk service: calibrated risk of an ICU transfer, an emergency "
    "response or a cardiac arrest within the model's horizon, from vital-sign features, "
    "with the model version that answered. `POST /predict` takes feature rows, "
    "`/score_vitals` raw vital-sign events, `/arrow/predict` an Arrow stream; "
    "`/readyz` says whether a verified model is loaded; `/metrics` is for Prometheus. "
    "Scoring endpoints need `X-API-Key` when the service has one."
)


@cache
def docs_page() -> bytes:
    """BentoML's docs page without the tag manager (read once from the installed package)."""
    from importlib.util import find_spec

    spec = find_spec("_bentoml_impl.server")  # BentoML's server package: where the page is
    if spec is None or spec.origin is None:
        raise RuntimeError("BentoML's server package is not installed")
    page = (Path(spec.origin).parent / "main-openapi.html").read_text()
    page = _TAG_MANAGER.sub("", page)
    if "googletagmanager" in page:  # a BentoML release changed the snippet: fail loudly
        raise RuntimeError("BentoML's docs page still loads Google Tag Manager")
    return page.encode()


class _TooLargeError(Exception):
    pass


class Guard:
    """ASGI middleware: request size limit, optional API key, content types.

    Args:
        app: the application behind it.
        api_key: required in ``X-API-Key`` on scoring endpoints when set.
        max_bytes: the largest request body accepted on any endpoint.
    """

    def __init__(self, app: Any, api_key: str | None, max_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            return
        if await self._documentation(scope, receive, send):
            return
        path = scope["path"]
        wanted = PROTECTED.get(path)
        if wanted is not None:
            given = headers.get(b"x-api-key", b"")
            if self.api_key is not None and not hmac.compare_digest(given, self.api_key):
                await _reply(send, 401, "missing or wrong X-API-Key header")
                return
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if scope.get("method") == "POST" and kind != wanted.encode():
                await _reply(send, 415, f"send {wanted} to {path}")
                return
        try:
            body = await self._read(receive)
        except _TooLargeError:
            await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _documentation(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """The docs page and the document it renders (see the module's docstring); False
        for any other request."""
        path, method = scope["path"], scope.get("method")
        if path == "/" and method in ("GET", "HEAD"):
            await _docs(send, head=method == "HEAD")
            return True
        if path == "/docs.json" and method == "GET":
            await self.app(scope, receive, _described(send))
            return True
        return False

    async def _read(self, receive: Any) -> list[dict[str, Any]]:
        """The request's body messages, refusing (``_TooLargeError``) past the limit.

        The body is read here, not by the application, so the limit holds whatever the
        application does with it, and is buffered only up to the limit.
        """
        messages: list[dict[str, Any]] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client went away: the app hears it too
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLargeError
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    """A ``receive`` that hands out ``messages`` first, then the real one's (which waits
    for the client to disconnect)."""
    pending = list(messages)

    async def replayed() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()  # type: ignore[no-any-return]

    return replayed


def _described(send: Any) -> Any:
    """A ``send`` that puts Vigil's description into the OpenAPI document it passes on."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if start.get("status") == 200:
            doc = json.loads(body)
            doc.setdefault("info", {})["description"] = DESCRIPTION
            body = json.dumps(doc).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", b"%d" % len(body)))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


async def _docs(send: Any, *, head: bool) -> None:
    body = docs_page()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"content-security-policy", DOCS_CSP.encode()),
        (b"referrer-policy", b"no-referrer"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
