"""`/api/v1/config`: the operator file, sanitized, and a validator for a new one."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.errors import ErrorBody
from operator_file import ConfigProblem, parse, redact, validate
from store.tokens import Principal, Scope

router = APIRouter(
    prefix="/api/v1/config",
    tags=["config"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class Validation(BaseModel):
    valid: bool
    errors: list[ConfigProblem]


class ValidateRequest(BaseModel):
    yaml: str | None = Field(None, description="An operator file's text")
    config: dict[str, Any] | None = Field(None, description="Or the same as JSON")


@router.get("/operator", summary="The operator file, secrets redacted")
async def get_operator(
    request: Request, _: Annotated[Principal, require(Scope.jobs_read)]
) -> dict[str, Any]:
    document: dict[str, Any] = request.app.state.operator.model_dump(mode="json")
    return dict(redact(document))


@router.post("/validate", summary="Validate an operator file")
async def validate_operator(
    request: Request,
    _: Annotated[Principal, require(Scope.jobs_read)],
    body: ValidateRequest | None = None,
) -> Validation:
    """Checks the given text or JSON, or else the loaded file, naming each error's path."""
    if body and body.yaml is not None:
        config, problems = parse(body.yaml)
    elif body and body.config is not None:
        config, problems = validate(body.config)
    else:
        path = request.app.state.settings.operator_file
        text = path.read_text() if path else yaml.safe_dump({})
        config, problems = parse(text)
    return Validation(valid=config is not None, errors=problems)
