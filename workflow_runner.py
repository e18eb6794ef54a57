"""The workflow sandbox, without its trips into the sandbox for every payload.

temporalio (1.35) asks a workflow instance, for each payload of every activation and of
every completion, which serialization context and which external-store target it has:
six passes over the payloads, each answer an `exec` inside the sandbox. A converter that
ignores contexts and stores nothing outside gets the same answer every time, at about
1.7 ms of the worker's CPU on the workflow task that takes an executor's result and
starts the next step (0.4 ms on a bare workflow's). `ContextFreeRunner` answers those
questions outside the sandbox for such a converter; the workflow code still runs in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import temporalio.bridge.proto.workflow_activation as activation
import temporalio.bridge.proto.workflow_completion as completion
from temporalio import workflow
from temporalio.converter import (
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
    WorkflowSerializationContext,
)
from temporalio.worker import (
    WorkflowInstance,
    WorkflowInstanceDetails,
    WorkflowRunner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

if TYPE_CHECKING:
    from temporalio.worker._command_aware_visitor import CommandInfo


def ignores_context(converter: DataConverter) -> bool:
    """Whether `converter` converts the same whatever the context, and stores nothing
    outside the history: then no payload needs the instance's answer."""
    probe = WorkflowSerializationContext(namespace="", workflow_id="")
    return converter.external_storage is None and converter.with_context(probe) is converter


def runner_for(converter: DataConverter) -> WorkflowRunner:
    """The runner a worker with `converter` uses: the sandbox, context-free when it may."""
    sandbox = SandboxedWorkflowRunner()
    return ContextFreeRunner(sandbox) if ignores_context(converter) else sandbox


class ContextFreeRunner(WorkflowRunner):
    def __init__(self, sandbox: SandboxedWorkflowRunner) -> None:
        self.sandbox = sandbox

    def prepare_workflow(self, defn: workflow._Definition) -> None:
        self.sandbox.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return ContextFree(self.sandbox.create_instance(det))

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self.sandbox.set_worker_level_failure_exception_types(types)


class ContextFree(WorkflowInstance):
    """A sandboxed instance whose payloads need no context (`ignores_context`)."""

    def __init__(self, inner: WorkflowInstance) -> None:
        self.inner = inner

    def activate(
        self, act: activation.WorkflowActivation
    ) -> completion.WorkflowActivationCompletion:
        return self.inner.activate(act)

    def get_serialization_context(
        self, command_info: CommandInfo | None
    ) -> SerializationContext | None:
        # None: the worker's own converter, which is the same with any context.
        return None

    def get_external_store_context(
        self, command_info: CommandInfo | None
    ) -> StorageDriverStoreContext:
        # Nothing is stored outside; the target the instance would name is never read.
        info = self.inner.get_info()
        return StorageDriverStoreContext(
            target=StorageDriverWorkflowInfo(
                id=info.workflow_id,
                run_id=info.run_id,
                type=info.workflow_type,
                namespace=info.namespace,
            )
        )

    def get_info(self) -> workflow.Info:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()
