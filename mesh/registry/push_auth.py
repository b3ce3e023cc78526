"""Write access to the local registry: with --registry-push-token-file, a push must present the
token; pulls stay open.

The flow is the one Docker's token auth defines, which every client here speaks:
- `GET /v2/` without a credential answers 401 with `WWW-Authenticate: Bearer realm=".../v2/token",
  service="cachemesh"`, as a token-auth registry does, so `docker login` and `docker pull` learn
  where tokens come from;
- `GET /v2/token` with Basic auth whose password is the push token (what `docker login -u ANY
  --password-stdin` stores), or `POST /v2/token` with an OAuth2 password grant (what BuildKit and
  containerd try first with credentials), answers a bearer token that may push; without
  credentials it answers an anonymous token, which reads only (pulls need none at all);
- a push (uploads, a manifest PUT) needs that bearer token, or Basic auth with the push token
  directly (skopeo `--dest-creds`, oras `-p`); else 401 `UNAUTHORIZED` with the challenge and a
  message that says what to do.

Bearer tokens are HMACs under a key made at start, with an expiry: nothing to store, and a
restart ends them (clients fetch a new one on the next 401).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

from aiohttp import web

SERVICE = "cachemesh"
TOKEN_LIFETIME = 3600
"""Seconds a bearer token may push. Docker and containerd fetch a new one when it expires."""
ANONYMOUS = "anonymous"


class PushAuth:
    def __init__(self, token: bytes, *, clock: float | None = None) -> None:
        self._token = token
        self._key = os.urandom(32)
        self._clock = clock  # fixed time, for tests

    def _now(self) -> int:
        return int(self._clock if self._clock is not None else time.time())

    def challenge(self, request: web.Request, scope: str = "") -> str:
        realm = f"http://{request.host}/v2/token"
        text = f'Bearer realm="{realm}",service="{SERVICE}"'
        return text + (f',scope="{scope}"' if scope else "")

    # --- credentials -------------------------------------------------------------------------

    def _password_ok(self, password: bytes) -> bool:
        return hmac.compare_digest(password, self._token)

    def _basic_password(self, request: web.Request) -> bytes | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return None
        return decoded.partition(b":")[2]

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, f"push:{expires}".encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        expires = self._now() + TOKEN_LIFETIME
        return f"{expires}.{self._mac(expires)}"

    def _push_token_ok(self, token: str) -> bool:
        expires, _, mac = token.partition(".")
        if not expires.isdigit() or int(expires) < self._now():
            return False
        return hmac.compare_digest(mac, self._mac(int(expires)))

    def may_push(self, request: web.Request) -> bool:
        bearer = self._bearer(request)
        if bearer is not None:
            return self._push_token_ok(bearer)
        password = self._basic_password(request)
        return password is not None and self._password_ok(password)

    def knows(self, request: web.Request) -> bool:
        """A credential this registry handed out or takes (for `GET /v2/`): anonymous included."""
        bearer = self._bearer(request)
        if bearer is not None:
            return bearer == ANONYMOUS or self._push_token_ok(bearer)
        password = self._basic_password(request)
        return password is not None and self._password_ok(password)

    # --- the token endpoint ----------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """`GET /v2/token` (Basic auth) or `POST /v2/token` (OAuth2 password grant)."""
        if request.method == "POST":
            form = await request.post()
            grant = str(form.get("grant_type", ""))
            if grant == "password":
                password: bytes | None = str(form.get("password", "")).encode()
            elif grant == "refresh_token":
                refresh = str(form.get("refresh_token", ""))
                if self._push_token_ok(refresh):
                    return self._granted(self.issue())
                password = b""
            else:
                password = None
        elif request.method == "GET":
            password = self._basic_password(request)
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if password is None:
            return self._granted(ANONYMOUS)  # no credentials: read-only, as pulls are anyway
        if not self._password_ok(password):
            return _unauthorized(
                "wrong push token: log in with the token in this node's --registry-push-token-file "
                "as the password",
                self.challenge(request),
            )
        return self._granted(self.issue())

    def _granted(self, token: str) -> web.Response:
        lifetime = TOKEN_LIFETIME if token != ANONYMOUS else 300
        body: dict[str, object] = {"token": token, "access_token": token, "expires_in": lifetime}
        if token != ANONYMOUS:
            body["refresh_token"] = token
        return web.json_response(body)


def _unauthorized(message: str, challenge: str) -> web.Response:
    body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": message, "detail": None}]})
    return web.Response(
        status=401,
        body=body.encode(),
        content_type="application/json",
        headers={"WWW-Authenticate": challenge, "Docker-Distribution-API-Version": "registry/2.0"},
    )
