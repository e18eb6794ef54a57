"""`/api/v1/config`: the operator file, sanitized, and a validator for a new one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request
from pydantic import BaseModel, Field, model_validator

from api.auth import require
from api.errors import ErrorBody, now_iso
from api.route import strict_router
from operator_file import ConfigProblem, parse, redact, validate
from store.tokens import Principal, Scope

router = strict_router(
    prefix="/api/v1/config",
    tags=["config"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class Validation(BaseModel):
    valid: bool
    errors: list[ConfigProblem] = Field(description="What makes it invalid, each with its path")
    warnings: list[ConfigProblem] = Field(description="Valid, but probably not meant")
    message: str
    timestamp: str


SHAPES = (
    '{"yaml": "<the operator file\'s text>"} or {"config": {<the same document as JSON>}}; '
    "no body checks the loaded file"
)


class ValidateRequest(BaseModel):
    """An operator file to check: its text as `yaml`, or its document as `config`."""

    yaml: str | None = Field(None, description="An operator file's text")
    config: dict[str, Any] | None = Field(None, description="Or its document, as JSON")

    @model_validator(mode="before")
    @classmethod
    def _one_shape(cls, data: Any) -> Any:
        keys = set(data) if isinstance(data, dict) else set()
        if not isinstance(data, dict) or len(keys) != 1 or not keys <= {"yaml", "config"}:
            got = ", ".join(sorted(map(str, keys))) if isinstance(data, dict) else "not an object"
            raise ValueError(f"send one of {SHAPES} (got {got or 'an empty object'})")
        return data


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
    body: Annotated[
        ValidateRequest | None,
        Body(
            description=f"Send {SHAPES}.",
            openapi_examples={
                "yaml": {
                    "summary": "The file's text",
                    "value": {"yaml": "gates:\n  build: {required: true, timeout_minutes: 60}\n"},
                },
                "config": {
                    "summary": "The document as JSON",
                    "value": {"config": {"gates": {"build": {"required": True}}}},
                },
            },
        ),
    ] = None,
) -> Validation:
    """Checks the given text or document, naming each error's path; with no body, the file
    the API loaded (`PILOTHOUSE_OPERATOR_FILE`)."""
    if body is None:
        path = request.app.state.settings.operator_file
        config, problems = parse(path.read_text()) if path else validate({})
    elif body.yaml is not None:
        config, problems = parse(body.yaml)
    else:
        config, problems = validate(body.config)
    warnings = config.warnings() if config else []
    return Validation(
        valid=config is not None,
        errors=problems,
        warnings=warnings,
        message="Configuration is valid" if config else f"{len(problems)} problem(s) found",
        timestamp=now_iso(),
    )
