"""What keeps the server from being a hole in the machine it runs on.

- HTTP Basic auth on every route (docs and /openapi.json included: unlike A1111 we do not leave
  them open, the route list is part of what a password should protect).
- Host header check while unauthenticated on loopback (Starlette's TrustedHostMiddleware, added
  in `server.create_app`): a page on evil.example that rebinds its DNS name to 127.0.0.1 sends
  `Host: evil.example` and is refused (DNS rebinding).
- Browser cross-site writes refused (Origin / Sec-Fetch-Site), since a page on any site can POST
  to 127.0.0.1 without CORS if it does not read the answer.
- Request bodies bounded before they are read.
- Client paths resolved (symlinks included) and checked against the roots they must stay in.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import re
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlsplit

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.limits import check_path

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes that take dataset uploads (a zip of pictures can be gigabytes) get the upload limit; every
# other body the much smaller one. Regular expressions matched against the whole path.
UPLOAD_PATHS = (r"/v1/trainings(?:/.*)?", r"/v1/datasets/[^/]+/files")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_api_auth(spec: str | None) -> list[tuple[bytes, bytes]]:
    """`user:pass` or A1111's comma-separated `u1:p1,u2:p2`."""
    if spec is None:
        return []
    creds = []
    for item in spec.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise InvalidParameter("api_auth", "***", "expected USER:PASS (comma-separated for several)")
        creds.append((user.encode(), password.encode()))
    return creds


def check_basic_auth(header: str | None, creds: Sequence[tuple[bytes, bytes]]) -> bool:
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = raw.partition(b":")
    if not sep:
        return False
    ok = False
    for u, p in creds:
        # Both comparisons always run, so timing tells nothing about which half matched.
        ok |= hmac.compare_digest(user, u) & hmac.compare_digest(password, p)
    return ok


class SecurityMiddleware:
    """Pure ASGI middleware: runs before FastAPI parses anything."""

    def __init__(self, app, *, credentials: Sequence[tuple[bytes, bytes]],
                 max_body_bytes: int, max_upload_bytes: int, upload_paths: Sequence[str] = UPLOAD_PATHS):
        self.app = app
        self.credentials = list(credentials)
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_paths = re.compile("|".join(f"(?:{p})" for p in upload_paths))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host_header = headers.get("host", "")
        if self.credentials and not check_basic_auth(headers.get("authorization"), self.credentials):
            return await _reply(send, 401, {"detail": "Not authenticated"},
                                [(b"www-authenticate", b'Basic realm="lorastudio"')])
        if scope["method"] in UNSAFE_METHODS:
            why = _cross_site(headers, scope.get("scheme", "http"), host_header)
            if why:
                return await _reply(send, 403, {"detail": f"cross-site request refused: {why}"})
        upload = self.upload_paths.fullmatch(scope["path"]) is not None
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        too_large = {"detail": _too_large(limit, upload)}
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send, 400, {"detail": "invalid Content-Length"})
            if int(length) > limit:
                return await _reply(send, 413, too_large)
        return await self._bounded(scope, receive, send, limit, too_large)

    async def _bounded(self, scope, receive, send, limit: int, too_large_body: dict):
        # Without Content-Length (chunked) the body is counted as it arrives. Past the limit the
        # app sees the body end, and whatever it answers is replaced by the 413: an exception
        # would be turned into a 400 by FastAPI's body parsing.
        seen = 0
        too_large = started = replied = False

        async def counting_receive():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            nonlocal started, replied
            if too_large and not started:
                if message["type"] == "http.response.start" and not replied:
                    replied = True
                    await _reply(send, 413, too_large_body)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not (too_large and not started):
                raise
        if too_large and not started and not replied:
            await _reply(send, 413, too_large_body)


def _too_large(limit: int, upload: bool) -> str:
    size = f"{limit / 1024**2:.0f} MiB ({limit} bytes)"
    if upload:
        return (f"upload over the server's limit of {size}: send the dataset in several parts "
                f"(several zips or batches of pictures), or start the server with a larger upload limit")
    return f"request body over {size}"


def _cross_site(headers: dict[str, str], scheme: str, host_header: str) -> str | None:
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None:
        own = f"{scheme}://{host_header}".lower()
        if origin.lower().rstrip("/") != own:
            return f"Origin {origin!r} is not this server ({own})"
    return None


async def _reply(send, status: int, body: dict, extra_headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": data})


# --- paths -------------------------------------------------------------------------------------

_SEP = re.compile(r"[\\/]+")


def resolve_inside(value: str | Path, roots: Sequence[Path], *, field: str, base: Path | None = None) -> Path:
    """The real path of `value` (relative ones against `base`), refused unless inside a root.

    `..` is refused outright, also percent-encoded (`%2e%2e`, double-encoded too) and with
    backslashes, even where it would land back inside: it only ever appears in attacks.
    Resolution follows symlinks, so a link inside a root pointing outside is refused as well.
    """
    text = str(value)
    if not text or "\x00" in text:
        raise InvalidParameter(field, text, "empty path or NUL byte")
    try:
        check_path(text)  # a part over 255 bytes fails in every system call: say so now
    except ValueError as exc:
        raise InvalidParameter(field, text, str(exc)) from None
    decoded = text
    for _ in range(3):
        decoded = unquote(decoded)
    for form in (text, decoded):
        if ".." in _SEP.split(form):
            raise InvalidParameter(field, text, "'..' is not allowed in a path")
    if text.startswith("~"):
        raise InvalidParameter(field, text, "'~' paths are not expanded; give a path inside the allowed folder")
    path = Path(text)
    if not path.is_absolute():
        if base is None:
            raise InvalidParameter(field, text, "must be an absolute path")
        path = base / path
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise InvalidParameter(field, text, f"cannot be resolved ({exc})") from None
    for root in roots:
        root_real = Path(root).resolve()
        if real == root_real or real.is_relative_to(root_real):
            return real
    names = ", ".join(str(Path(r).resolve()) for r in roots) or "(none configured)"
    raise InvalidParameter(field, text, f"must be inside {names}")


def check_webhook_url(url: str, allowed_hosts: Iterable[str]) -> str:
    allowed = {h.lower() for h in allowed_hosts}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("webhook_url", url, "must be an http(s) URL")
    if parts.username or parts.password:
        raise InvalidParameter("webhook_url", url, "credentials in the URL are not allowed")
    if parts.hostname.lower() not in allowed:
        hint = ", ".join(sorted(allowed)) if allowed else "none are allowed; start the server with webhook hosts"
        raise InvalidParameter("webhook_url", url, f"host {parts.hostname!r} is not an allowed webhook host ({hint})")
    return url
