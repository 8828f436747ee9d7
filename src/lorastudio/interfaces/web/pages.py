"""The page at `/` and its vendored static files under `/ui/`: no build step, no CDN.

Every response here carries a Content-Security-Policy that allows only this origin (pictures
also as data:/blob: URLs, which the page makes from API answers), so a string that slipped
past textContent still could not run a script or reach another host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from lorastudio.core.errors import NotFound
from lorastudio.interfaces.api.security import resolve_inside

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
         ".png": "image/png", ".ico": "image/x-icon"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=TYPES[".html"], headers=HEADERS)


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/ui/{path:path}")
async def static_file(path: str) -> FileResponse:
    real = resolve_inside(path, [STATIC], field="path", base=STATIC)
    kind = TYPES.get(real.suffix)
    if kind is None or not real.is_file():
        raise NotFound("file", path)
    return FileResponse(real, media_type=kind, headers=HEADERS)
