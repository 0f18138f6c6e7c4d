"""The dashboard: a single page served by the API function itself, and ``GET /me``, which the page asks first.

The page and its assets (``functions/dashboard/``: plain ES modules and CSS, no build step, nothing from a CDN)
are open routes (``runly_core.resources.OPEN_ROUTES``): they hold no data. The page calls this very API with the key its
user enters, so a ``read`` key sees everything read-only and a ``write`` or ``admin`` key may also act.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from functions.api.auth import require
from functions.api.openapi import declare
from functions.logic.errors import NotFound
from runly_core.contracts import KeyIdentity, Scope

router = APIGatewayHttpRouter()

ASSETS_DIR = Path(__file__).resolve().parents[2] / "dashboard"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
}
# Same origin only: no inline script or style (the page sets styles through the CSSOM, which CSP allows), no
# eval, no frames, nothing from elsewhere. The API the page calls is this origin too.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The files keep their names from one deployment to the next (no build step, no fingerprints), so a browser
# revalidates each time: a 304 for an unchanged file, never a stale script beside a new page.
CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class Asset:
    body: str
    content_type: str
    etag: str


@lru_cache(maxsize=1)
def assets() -> dict[str, Asset]:
    """Every file of the dashboard by name, read once per cold start. Only these names are ever served."""
    found: dict[str, Asset] = {}
    for path in sorted(ASSETS_DIR.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_text(encoding="utf-8")
        # Weak: the same file is sent gzipped or not, as the client accepts.
        etag = 'W/"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
        found[path.name] = Asset(body=body, content_type=content_type, etag=etag)
    return found


def _serve(name: str) -> Response[str]:
    asset = assets().get(name)
    if asset is None:
        raise NotFound(f"no dashboard file {name!r}", field="asset")
    headers = {**SECURITY_HEADERS, "Cache-Control": CACHE_CONTROL, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if_none_match = router.current_event.headers.get("if-none-match") or ""
    if asset.etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, body="", headers=headers)
    return Response(status_code=200, content_type=asset.content_type, body=asset.body, headers=headers, compress=True)


@router.get("/", include_in_schema=False)
def page() -> Response[str]:
    return _serve(INDEX)


@router.get("/dashboard/<asset>", include_in_schema=False)
def dashboard_file(asset: str) -> Response[str]:
    return _serve(asset)


@router.get(
    "/me",
    summary="The calling key: its id, scope and environment (what the dashboard may offer)",
    responses=declare(200, "The key this request was made with"),
    tags=["keys"],
)
def who_am_i() -> KeyIdentity:
    caller = require(router.current_event, Scope.READ)
    return KeyIdentity(key_id=caller.key_id, scope=caller.scope, environment=caller.environment)
