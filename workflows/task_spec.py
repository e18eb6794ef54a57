"""What a coding-agent task is made of: the request the API takes, the configuration the
workflow checks again, and the workflow's input and answers."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr, model_validator

from settings import LIMITS
from store.credentials import CredentialRef
from strict import Name, Strict, Text
from workflows.gate import GateConfig
from workflows.iterations import LoopPlace
from workflows.run_spec import REPOSITORY


def _branch(name: str) -> str:
    if ".." in name or name.endswith((".", "/", ".lock")) or "//" in name:
        raise ValueError("not a branch name git takes")
    return name


# A branch name git takes and no option: no leading dash, no `..`, no spaces.
Branch = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$"), AfterValidator(_branch)
]
WEB_URL = r"^https?://[^\s]+$"


def _no_credentials(url: str) -> str:
    # A token in the URL would be kept and shown with it: credentials go apart.
    if re.match(r"^(https?|git|file)://[^/]*@", url):
        raise ValueError("no user or token in the URL; give access_token or provider_key")
    return url


RepoUrl = Annotated[
    str,
    Field(max_length=LIMITS.max_url_chars, pattern=REPOSITORY),
    AfterValidator(_no_credentials),
]
TaskState = Literal[
    "pending",
    "cloning",
    "running",
    "completed",
    "awaiting_instruction",
    "creating_pr",
    "pr_created",
    "failed",
    "canceled",
    # A task definition's: it runs nothing itself; `paused` when its schedule is.
    "active",
    "paused",
]
TASK_ENDS = frozenset({"failed", "canceled"})
TAKES_INSTRUCTIONS = frozenset({"completed", "awaiting_instruction", "pr_created"})
# Events after which a task waits for its user: its stream says `done` there.
TASK_SETTLED = frozenset(
    {"result.completed", "git.pr_created", "system.pr_rejected", "system.pr_failed"}
)
PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]


class TaskConfig(Strict):
    timeout_seconds: int = Field(
        600, ge=1, le=int(LIMITS.max_duration_s), description="Bounds each iteration"
    )
    ai_model: Name | None = Field(None, description="The agent's model; the server's default")
    max_turns: int = Field(20, ge=1, le=1000)
    target_branch: Branch | None = Field(
        None, description="Branch to start from and to open the PR against"
    )
    permission_mode: PermissionMode | None = None
    idle_timeout_seconds: float | None = Field(
        None, gt=0, le=LIMITS.max_duration_s, description="Kill an agent silent this long"
    )
    pr_gate: GateConfig | None = Field(
        None, description="A gate that must approve before `create-pr` pushes anything"
    )


class TaskCreate(Strict):
    """The coding-agent task request (`POST /api/v1/tasks`)."""

    repo_url: RepoUrl | None = Field(
        None,
        description="The repository: an https, ssh or git URL, or a local path; "
        "a scratch workspace when absent",
    )
    access_token: SecretStr | None = Field(
        None, description="A token for the repository; kept encrypted, never shown again"
    )
    provider_key: Name | None = Field(None, description="Or the name of a registered key")
    prompt: str = Field(min_length=1, max_length=LIMITS.max_prompt_chars)
    callback_url: str | None = Field(
        None, max_length=LIMITS.max_url_chars, pattern=WEB_URL, description="Webhook target"
    )
    config: TaskConfig = Field(default_factory=TaskConfig)

    @model_validator(mode="after")
    def _one_credential(self) -> TaskCreate:
        if self.access_token is not None and self.provider_key is not None:
            raise ValueError("give access_token or provider_key, not both")
        token = self.access_token.get_secret_value() if self.access_token else ""
        if len(token) > 4096 or any(c.isspace() or c == "\x00" for c in token):
            raise ValueError("access_token: at most 4096 characters, no spaces")
        if "\x00" in self.prompt:
            raise ValueError("prompt: NUL bytes are not allowed")
        return self


class TaskPlace(BaseModel):
    """Where a task continued as new picks up."""

    loop: LoopPlace
    workspace: str
    branch: str
    base_branch: str
    agent_session_id: str | None = None
    totals: dict[str, Any] = Field(default_factory=dict)
    pr_openings: int = 0


class TaskInput(BaseModel):
    """Loosely typed where it comes from a request (`config`), so it always decodes."""

    task_id: str
    owner: str
    repo_url: str | None = None
    credential: CredentialRef | None = None
    prompt: str
    callback_url: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    trace_id: str
    idle_ttl_seconds: float
    auto_approve_allowed: bool = True
    heartbeat_timeout_seconds: float = 10
    webhook_backoff_seconds: list[float] = Field(default_factory=lambda: [1.0, 5.0, 25.0])
    webhook_timeout_seconds: float = 10
    place: TaskPlace | None = None
    # An execution of a task definition (issue 12).
    definition_id: str | None = None
    definition_name: str | None = None
    trigger: Literal["manual", "schedule"] | None = Field(
        None, description="`schedule`: started by a Temporal Schedule; it records its own row"
    )
    allowed_tools: list[str] = Field(default_factory=list)
    one_shot: bool = Field(False, description="Finish after the first iteration: an execution")
    generate_report: bool = False


class PullRequestAsk(Strict):
    title: Name
    description: Text = ""
    target_branch: Branch | None = None
    by: Name = "api"


class PullRequestAnswer(BaseModel):
    status: Literal["pr_created", "awaiting_approval"]
    branch: str
    pr_url: str | None = None
    pr_number: int | None = None
    gate_id: str | None = None


class ReleaseIn(Strict):
    by: Name
