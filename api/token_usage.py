"""Token usage, summed from the event log's spending events.

A run's builders and auditors record what they spent in their `builder_finished` and
`auditor_finished` events, and any other spender may append a `tokens_used` event; each
payload is `{tokens_used, prompt_tokens?, completion_tokens?, provider?, model?}`. The sums
are made by the database in one grouped query, so a month of events never comes into the
API process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from store.models import Event, utcnow
from workflows.run_spec import DEFAULT_TOKEN_CAP

SUMS = ("prompt", "completion", "total")
SPENDING = ("builder_finished", "auditor_finished", "tokens_used")
Period = Literal["day", "week", "month"]
PERIODS: dict[str, timedelta] = {
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
    "month": timedelta(days=30),
}


class ProviderUsage(BaseModel):
    provider: str
    period: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cap_tokens: int
    percent_of_cap: float


class ModelUsage(BaseModel):
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageResponse(BaseModel):
    providers: list[ProviderUsage]
    models: list[ModelUsage]


def percent(part: int, whole: int) -> float:
    return round(part / whole * 100, 2) if whole > 0 else 0.0


def _field(name: str) -> Any:
    return col(Event.payload)[name].as_string()


async def by_model(session: AsyncSession, *where: Any) -> list[ModelUsage]:
    """Usage per provider and model, over the spending events that match `where`."""
    # Each event's fields first, labelled, so the outer query groups by plain columns: a
    # JSON expression repeated in GROUP BY binds new parameters, which PostgreSQL does not
    # take for the same expression.
    spent = (
        select(  # type: ignore[call-overload]
            sa.func.coalesce(_field("provider"), "unknown").label("provider"),
            sa.func.coalesce(_field("model"), "unknown").label("model"),
            sa.cast(_field("prompt_tokens"), sa.BigInteger).label("prompt"),
            sa.cast(_field("completion_tokens"), sa.BigInteger).label("completion"),
            sa.cast(_field("tokens_used"), sa.BigInteger).label("total"),
        )
        .where(col(Event.type).in_(SPENDING), *where)
        .subquery()
    )
    rows = await session.exec(
        select(
            spent.c.provider,
            spent.c.model,
            *(sa.func.coalesce(sa.func.sum(spent.c[n]), 0) for n in SUMS),
        )
        .group_by(spent.c.provider, spent.c.model)
        .order_by(spent.c.provider, spent.c.model)
    )
    return [
        ModelUsage(provider=p, model=m, prompt_tokens=pt, completion_tokens=ct, total_tokens=total)
        for p, m, pt, ct, total in rows
    ]


async def usage(session: AsyncSession, period: Period) -> UsageResponse:
    """The last day, week or month (30 days), by provider and by model."""
    models = await by_model(session, col(Event.created_at) >= utcnow() - PERIODS[period])
    totals: dict[str, tuple[int, int, int]] = {}
    for m in models:
        prompt, completion, total = totals.get(m.provider, (0, 0, 0))
        totals[m.provider] = (
            prompt + m.prompt_tokens,
            completion + m.completion_tokens,
            total + m.total_tokens,
        )
    providers = [
        ProviderUsage(
            provider=name,
            period=period,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            # The build system's cap is its default run cap; so is Pilothouse's.
            cap_tokens=DEFAULT_TOKEN_CAP,
            percent_of_cap=percent(total, DEFAULT_TOKEN_CAP),
        )
        for name, (prompt, completion, total) in totals.items()
    ]
    return UsageResponse(providers=providers, models=models)
