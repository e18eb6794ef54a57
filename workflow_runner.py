"""The workflow sandbox, without its trips into the sandbox for every payload.

temporalio (1.35) asks a workflow instance, for each payload of every activation and of
every completion, which serialization context and which external-store target it has:
six passes over the payloads, each answer an `exec` inside the sandbox. Those answers
serve only the payload codec and external storage; the payload and failure converters get
their contexts inside the instance. With no codec that reads a context and no external
storage, every answer leads to the same converter; asking cost about 1.7 ms of the
worker's CPU on the workflow task that takes an executor's result and starts the next step
(0.4 ms on a bare workflow's). `ContextFreeRunner` answers outside the sandbox then; the
workflow code still runs in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import temporalio.bridge.proto.workflow_activation as activation
import temporalio.bridge.proto.workflow_completion as completion
from temporalio import workflow
from temporalio.converter import (
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    WithSerializationContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

if TYPE_CHECKING:
    # The type of the SDK's own abstract signatures; a private module, so only for typing.
    from temporalio.worker._command_aware_visitor import CommandInfo

# No external storage: the target is never read.
NO_STORE = StorageDriverStoreContext(target=None)


def ignores_context(converter: DataConverter) -> bool:
    """Whether no payload of `converter`'s needs the instance's answers: no external
    storage, and a codec (if any) that takes no serialization context."""
    return converter.external_storage is None and not isinstance(
        converter.payload_codec, WithSerializationContext
    )


def runner_for(converter: DataConverter) -> WorkflowRunner:
    """The runner a worker with `converter` uses: the sandbox, context-free when it may."""
    return ContextFreeRunner() if ignores_context(converter) else SandboxedWorkflowRunner()


@dataclass(frozen=True)
class ContextFreeRunner(SandboxedWorkflowRunner):
    """The sandbox, its instances answering the payload questions outside it (for a
    converter that `ignores_context`). A `SandboxedWorkflowRunner` still, so what adjusts
    the sandbox (the SDK's debugger support, plugins' passthrough modules) finds one."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return ContextFreeInstance(super().create_instance(det))


class ContextFreeInstance(WorkflowInstance):
    """A sandboxed instance; what the worker asks of it besides its payloads' contexts
    goes to the sandbox as before (activations, info, the thread a deadlock names)."""

    def __init__(self, sandboxed: WorkflowInstance) -> None:
        self._sandboxed = sandboxed

    def activate(
        self, act: activation.WorkflowActivation
    ) -> completion.WorkflowActivationCompletion:
        return self._sandboxed.activate(act)

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        # None: the worker's own converter, which every context would leave as it is.
        return None

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        return NO_STORE

    def get_info(self) -> workflow.Info:
        return self._sandboxed.get_info()

    def get_thread_id(self) -> int | None:
        return self._sandboxed.get_thread_id()
