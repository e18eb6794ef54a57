"""The worker's workflow runner (workflow_runner.py): the sandbox kept, and a converter
that reads serialization contexts still given them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import (
    RestrictedWorkflowAccessError,
    SandboxedWorkflowRunner,
)

from workflow_runner import ContextFreeRunner, ignores_context, runner_for


class Note(BaseModel):
    text: str
    count: int


@activity.defn(name="runner_probe.echo")
async def echo(note: Note) -> Note:
    return Note(text=note.text.upper(), count=note.count + 1)


@workflow.defn(name="RunnerProbe")
class RunnerProbe:
    @workflow.run
    async def run(self, note: Note) -> dict[str, Any]:
        try:
            datetime.now()  # the sandbox refuses the wall clock to workflow code
            guarded = False
        except RestrictedWorkflowAccessError:
            guarded = True
        echoed = await workflow.execute_activity(
            echo, note, start_to_close_timeout=timedelta(seconds=30)
        )
        return {"guarded": guarded, "echoed": echoed.model_dump()}


class ContextRecorder(PayloadCodec, WithSerializationContext):
    """A codec that reads its context, as a key per activity type would: the same codec
    for a workflow's context, another for an activity's."""

    seen: ClassVar[list[SerializationContext | None]] = []

    def __init__(self, context: SerializationContext | None = None) -> None:
        self.context = context

    def with_context(self, context: SerializationContext) -> ContextRecorder:
        if not isinstance(context, ActivitySerializationContext):
            return self
        return ContextRecorder(context)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        ContextRecorder.seen.append(self.context)
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


async def run_probe(client: Client, converter: DataConverter) -> dict[str, Any]:
    client = Client(client.service_client, namespace=client.namespace, data_converter=converter)
    queue = f"runner-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RunnerProbe],
        activities=[echo],
        workflow_runner=runner_for(converter),
    ):
        result: dict[str, Any] = await client.execute_workflow(
            RunnerProbe.run, Note(text="hi", count=1), id=queue, task_queue=queue
        )
    return result


def test_pilothouses_converter_runs_context_free_in_the_sandbox() -> None:
    assert ignores_context(pydantic_data_converter)
    runner = runner_for(pydantic_data_converter)
    assert isinstance(runner, ContextFreeRunner)
    # What adjusts the sandbox (the SDK's debugger support, plugins) still finds one.
    assert isinstance(runner, SandboxedWorkflowRunner)


async def test_workflow_code_still_runs_in_the_sandbox(client: Client) -> None:
    result = await run_probe(client, pydantic_data_converter)
    assert result == {"guarded": True, "echoed": {"text": "HI", "count": 2}}


async def test_a_converter_that_reads_contexts_still_gets_them(client: Client) -> None:
    converter = dataclasses.replace(pydantic_data_converter, payload_codec=ContextRecorder())
    assert not ignores_context(converter)
    assert not isinstance(runner_for(converter), ContextFreeRunner)
    ContextRecorder.seen.clear()
    result = await run_probe(client, converter)
    assert result["guarded"] is True
    # The worker encoded the activity's input with the activity's own context.
    activities = [c for c in ContextRecorder.seen if isinstance(c, ActivitySerializationContext)]
    assert any(c.activity_type == "runner_probe.echo" for c in activities), ContextRecorder.seen
