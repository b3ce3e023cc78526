"""Errors in the distribution spec's JSON shape, from one helper."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# code -> HTTP status (distribution-spec, "Error Codes").
STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
}


class RegistryError(Exception):
    """Raised anywhere below the router; the router turns it into the spec's JSON answer."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or STATUS[code]
        self.detail = detail
        self.headers = headers or {}
        """Sent with the answer (an UNAUTHORIZED's WWW-Authenticate challenge)."""


def error_response(exc: RegistryError, *, head: bool = False) -> web.Response:
    body = json.dumps({"errors": [{"code": exc.code, "message": str(exc), "detail": exc.detail}]}).encode()
    headers = {"Docker-Distribution-API-Version": "registry/2.0", **exc.headers}
    if head:  # a HEAD answer has no body; Content-Length still says what GET would send
        return web.Response(status=exc.status, headers=headers)
    return web.Response(status=exc.status, body=body, content_type="application/json", headers=headers)
