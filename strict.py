"""Strict input: the base of every request model and workflow input, and bounded types.

An unknown field is an error that names the nearest known one, never dropped: a typo in
`gate` must not make a job with no gate. Floats are finite; strings carry no NUL byte and
have a length; free-form JSON (params, decision input, schemas) has a size and a depth.
The bounds are `settings.LIMITS`.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Annotated, Any

import jsonschema
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from settings import LIMITS


class Strict(BaseModel):
    """Refuses unknown fields, naming the nearest known one, and non-finite floats."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_fields(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not any(_own_extra(e["type"], e["loc"]) for e in errors):
                raise
            known = [*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)]
            details: list[InitErrorDetails] = []
            for e in errors:
                message = e["msg"]
                if _own_extra(e["type"], e["loc"]):
                    message = unknown_field(str(e["loc"][0]), known)
                # Re-raised errors keep their text: a custom error carries it as it is.
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError(e["type"], message.replace("{", "{{")),
                        loc=e["loc"],
                        input=e["input"],
                    )
                )
            raise ValidationError.from_exception_data(exc.title, details) from None


def _own_extra(kind: str, loc: tuple[int | str, ...]) -> bool:
    return kind == "extra_forbidden" and len(loc) == 1


def explain(exc: ValidationError) -> str:
    """A validation error in one line, each problem with its path."""
    return "; ".join(
        ".".join(str(p) for p in e["loc"]) + ": " + e["msg"].removeprefix("Value error, ")
        for e in exc.errors()
    )


def unknown_field(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return "unknown field" + (f"; did you mean `{match[0]}`?" if match else "")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL bytes are not allowed")
    return value


def _text(max_chars: int, min_chars: int = 0) -> Any:
    return Annotated[
        str, Field(min_length=min_chars, max_length=max_chars), AfterValidator(_no_nul)
    ]


Name = _text(LIMITS.max_name_chars, 1)
Text = _text(LIMITS.max_text_chars)
PathText = _text(LIMITS.max_path_chars, 1)
Id = _text(LIMITS.max_name_chars, 1)


def check_json(value: Any, max_bytes: int) -> None:
    """Raise ValueError unless `value` is finite, NUL-free JSON within a size and depth."""
    _walk(value, 0)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise ValueError(f"{size} bytes as JSON; at most {max_bytes}")


def _walk(value: Any, depth: int) -> None:
    if depth > LIMITS.max_json_depth:
        raise ValueError(f"nested deeper than {LIMITS.max_json_depth} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON numbers")
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(str(key))
            _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)


def _bounded(max_bytes: int) -> AfterValidator:
    def check(value: Any) -> Any:
        check_json(value, max_bytes)
        return value

    return AfterValidator(check)


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"/{p}" for p in exc.absolute_path) or "/"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    return schema


JsonObject = Annotated[dict[str, Any], _bounded(LIMITS.max_json_bytes)]
Params = Annotated[dict[str, Any], _bounded(LIMITS.max_params_bytes)]
JsonSchema = Annotated[dict[str, Any], _bounded(LIMITS.max_json_bytes), AfterValidator(_schema)]
Patch = Annotated[
    dict[str, Any] | list[dict[str, Any]],
    Field(description="A JSON Patch (RFC 6902): one operation or a list"),
    _bounded(LIMITS.max_params_bytes),
]
