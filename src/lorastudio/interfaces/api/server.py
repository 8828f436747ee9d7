"""The FastAPI app: A1111's `/sdapi/v1` plus the `/v1/trainings` queue, and the server around it."""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from lorastudio import __version__
from lorastudio.core.errors import DiskFullError, InvalidParameter, LorastudioError, NotFound
from lorastudio.core.settings import StudioSettings
from lorastudio.interfaces.api.public_text import public_text, server_roots, small
from lorastudio.interfaces.api.security import LOOPBACK_NAMES, SecurityMiddleware, is_loopback, parse_api_auth
from lorastudio.interfaces.api.state import ApiLimits, ApiState
from lorastudio.interfaces.web import web_router

log = logging.getLogger(__name__)

_AUTO = "auto"


def create_app(settings: StudioSettings, *, engine=None, store=None, api_auth: str | None = None,
               limits: ApiLimits | None = None, allowed_hosts: Sequence[str] | None | str = _AUTO,
               webhook_hosts: Sequence[str] = (), dataset_roots: Sequence[Path] = (), train_fn=None,
               poll_interval_s: float = 0.5, run_worker: bool = True, artifacts=None) -> FastAPI:
    """Build one app instance; nothing is shared with other instances.

    allowed_hosts: Host header names accepted. "auto": loopback names only while there is no
    api_auth (DNS-rebinding defence), any host once requests must authenticate.
    train_fn replaces lorastudio.training.api.train (benchmarks and tests of the queue itself).
    artifacts: the ArtifactStore result downloads are read from (default: the projects folder).
    """
    from lorastudio.interfaces.api import (a1111_routes, caption_routes, controlnet_routes, extras_routes, publish_routes,
                                           training_routes)

    credentials = parse_api_auth(api_auth)
    if allowed_hosts == _AUTO:
        allowed_hosts = None if credentials else LOOPBACK_NAMES
    state = ApiState(settings, engine=engine, store=store, limits=limits, webhook_hosts=webhook_hosts,
                     dataset_roots=dataset_roots, train_fn=train_fn, poll_interval_s=poll_interval_s,
                     run_worker=run_worker, artifacts=artifacts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Starting the worker at once recovers jobs a crashed server left IN_PROGRESS.
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="lorastudio", version=__version__, lifespan=lifespan,
                  description="A1111-compatible generation API (/sdapi/v1) and a LoRA training queue "
                              "(/v1/trainings).")
    app.state.api = state
    app.include_router(a1111_routes.router)
    app.include_router(controlnet_routes.router)
    app.include_router(extras_routes.router)
    app.include_router(training_routes.router)
    app.include_router(publish_routes.router)
    app.include_router(web_router())  # the page at / and the endpoints it needs
    app.include_router(caption_routes.router)
    _install_error_handlers(app)
    app.add_middleware(SecurityMiddleware, credentials=credentials,
                       max_body_bytes=state.limits.max_body_bytes, max_upload_bytes=state.limits.max_upload_bytes)
    if allowed_hosts is not None:
        # Added last, so it runs first: a rebound DNS name is refused before anything else.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[_host_pattern(h) for h in allowed_hosts],
                           www_redirect=False)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    # Clients get the message; tracebacks and the server's folders go to the server log only.
    def public(exc: BaseException | str) -> str:
        return public_text(exc, server_roots(app.state.api))

    @app.exception_handler(InvalidParameter)
    async def invalid(_: Request, exc: InvalidParameter):
        loc = ["body", *str(exc.field).split(".")]
        return JSONResponse(status_code=422, content={
            "detail": [{"loc": loc, "msg": public(exc.why), "type": "value_error", "input": small(exc.value)}],
            "error": "InvalidParameter", "message": public(exc)})

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound):
        return JSONResponse(status_code=404, content={"detail": public(exc), "error": "NotFound",
                                                      "candidates": exc.candidates})

    @app.exception_handler(DiskFullError)
    async def disk_full(_: Request, exc: DiskFullError):
        log.error("%s", exc)
        return JSONResponse(status_code=507, content={"detail": public(exc), "error": "DiskFullError"})

    @app.exception_handler(LorastudioError)
    async def user_error(_: Request, exc: LorastudioError):
        return JSONResponse(status_code=400, content={"detail": public(exc), "error": type(exc).__name__})

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes the input back; a NaN there cannot be written as JSON
        # (a 500 instead of the 422) and a 40 MB base64 string should not be sent back.
        errors = [{"loc": list(e.get("loc", ())), "msg": public(str(e.get("msg", ""))), "type": str(e.get("type", "")),
                   "input": small(e.get("input"))} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        # ENOSPC from a library that wrote on our behalf (multipart spooling, SQLite's job store).
        if DiskFullError.is_disk_full(exc) or "database or disk is full" in str(exc):
            log.error("disk full", exc_info=exc)
            return await disk_full(request, DiskFullError(getattr(exc, "filename", None) or "the server's disk"))
        incident = uuid.uuid4().hex[:12]
        log.error("unhandled error (incident %s)", incident, exc_info=exc)
        return JSONResponse(status_code=500, content={
            "error": "InternalError", "incident": incident,
            "detail": f"internal error ({type(exc).__name__}); the server log has the details under incident {incident}"})


def _host_pattern(host: str) -> str:
    # Starlette compares the Host header's name without the port, IPv6 literals in brackets:
    # "[::1]:7860" is "[::1]".
    host = host.strip().lower().strip("[]")
    return f"[{host}]" if ":" in host else host


def check_bind(host: str, api_auth: str | None) -> None:
    if not is_loopback(host) and not api_auth:
        raise InvalidParameter("host", host, "listening beyond this machine requires --api-auth USER:PASS")


def run_server(settings: StudioSettings, host: str = "127.0.0.1", port: int = 7860, api_auth: str | None = None,
               **app_options: Any) -> None:
    """Serve until interrupted. A non-loopback host is refused without api_auth."""
    import uvicorn

    check_bind(host, api_auth)
    parse_api_auth(api_auth)  # fail before binding, not on the first request
    app = create_app(settings, api_auth=api_auth, **app_options)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
