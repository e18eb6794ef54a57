"""Model overrides: which model a role uses, for every run or for one run.

Set from the dashboard and kept in `model_overrides`; one row per role, category,
complexity and run, so setting one again replaces its model."""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import ModelOverride, utcnow
from strict import Name, Strict

# Mapping keys: no spaces or control characters; `*` means every one.
KEY = r"^[A-Za-z0-9_.:*-]+$"
Category = Annotated[str, Field(min_length=1, max_length=200, pattern=KEY)]
Complexity = Annotated[str, Field(min_length=1, max_length=50, pattern=KEY)]


class ModelMapping(BaseModel):
    role: str
    category: str = Field(description="`*`: every category")
    complexity: str = Field(description="`*`: every complexity")
    model: str
    scope: Literal["global", "run"]
    run_id: str | None


class ModelOverrideIn(Strict):
    """Which model a role uses: for every run, or (with `run_id`) for one run."""

    role: Literal["builder", "auditor"]
    model: Name
    run_id: Name | None = None
    category: Category = "*"
    complexity: Complexity = "*"
    scope: Literal["global", "run"] | None = Field(
        None, description="The build system's field; `run_id` alone says the same"
    )

    @model_validator(mode="after")
    def _scope_matches(self) -> ModelOverrideIn:
        if self.scope == "run" and self.run_id is None:
            raise ValueError("scope `run` needs a run_id")
        if self.scope == "global" and self.run_id is not None:
            raise ValueError("scope `global` takes no run_id")
        return self


class OverrideSet(ModelMapping):
    message: str


def mapping(row: ModelOverride) -> ModelMapping:
    return ModelMapping(
        role=row.role,
        category=row.category,
        complexity=row.complexity,
        model=row.model,
        scope="run" if row.run_id else "global",
        run_id=row.run_id,
    )


async def mappings(session: AsyncSession, run_id: str | None) -> list[ModelMapping]:
    """The global overrides first, then each run's; with `run_id`, only that run's."""
    query = select(ModelOverride)
    if run_id is not None:
        query = query.where(
            sa.or_(col(ModelOverride.run_id).is_(None), col(ModelOverride.run_id) == run_id)
        )
    rows = await session.exec(
        query.order_by(
            col(ModelOverride.run_id).is_not(None),
            col(ModelOverride.run_id),
            col(ModelOverride.role),
            col(ModelOverride.category),
            col(ModelOverride.complexity),
        )
    )
    return [mapping(r) for r in rows]


async def save(session: AsyncSession, body: ModelOverrideIn, by: str) -> ModelOverride:
    same = select(ModelOverride).where(
        col(ModelOverride.role) == body.role,
        col(ModelOverride.category) == body.category,
        col(ModelOverride.complexity) == body.complexity,
        col(ModelOverride.run_id).is_(None)
        if body.run_id is None
        else col(ModelOverride.run_id) == body.run_id,
    )
    # Twice at most: when a concurrent request wrote the same key first, ours updates it.
    for attempt in (1, 2):
        row = (await session.exec(same)).first()
        if row is None:
            row = ModelOverride(**body.model_dump(exclude={"scope"}), set_by=by)
        else:
            row.model, row.set_by, row.updated_at = body.model, by, utcnow()
        session.add(row)
        try:
            await session.commit()
            return row
        except IntegrityError:
            await session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
