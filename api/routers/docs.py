"""The API documents: Swagger UI at `/docs` and at the task-service seed's `/api/docs`, ReDoc
at `/redoc`, and the document as YAML. Their scripts and styles are served from here (the
`fastapi-offline` package ships them), so the pages work on a machine without internet."""

from __future__ import annotations

from importlib.resources import files

import yaml
from fastapi import Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.route import strict_router

ASSETS = "/docs/assets"

router = strict_router(include_in_schema=False)


def assets() -> StaticFiles:
    return StaticFiles(directory=str(files("fastapi_offline") / "static"))


def _swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} docs",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )


@router.get("/docs")
async def swagger(request: Request) -> HTMLResponse:
    return _swagger(request)


@router.get("/api/docs")
async def swagger_at_seed_path(request: Request) -> HTMLResponse:
    return _swagger(request)


@router.get("/docs/oauth2-redirect")
async def oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} reference",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


@router.get("/api/docs/openapi.yaml")
async def openapi_yaml(request: Request) -> Response:
    document = yaml.safe_dump(request.app.openapi(), sort_keys=False, allow_unicode=True)
    return Response(document, media_type="application/yaml")
