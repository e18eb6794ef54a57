"""The API documents at the paths the task-service seed uses: `/api/docs` and its YAML."""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/api/docs")
async def swagger(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} docs")


@router.get("/api/docs/openapi.yaml")
async def openapi_yaml(request: Request) -> Response:
    document = yaml.safe_dump(request.app.openapi(), sort_keys=False, allow_unicode=True)
    return Response(document, media_type="application/yaml")
