"""Schemathesis fuzzes every operation of the OpenAPI document, with a fixed seed: no answer
is a 5xx and every answer matches the document. bench/fuzz.py runs the same with more examples."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.worker import Worker

from bench.fuzz import fuzz
from tests.conftest import Api


# SQLite alone keeps the test under a minute; `python -m bench.fuzz --db postgresql` runs both.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_operation_answers_without_5xx_and_as_documented(
    api: Api, worker: Worker
) -> None:
    report = await asyncio.to_thread(
        fuzz, api.base_url, api.admin_token, examples=15, seed=1, stateful=True
    )
    print(report.render())
    assert report.answers, "the fuzzer sent nothing"
    assert report.ok, report.render()
