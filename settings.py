"""Pilothouse settings: one object, read from `PILOTHOUSE_*` variables and `.env`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

VERSION = "0.1.0"

YEAR_S = 365 * 24 * 3600
# Telegram's rule for setWebhook's secret_token.
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class Limits:
    """Bounds on what the API accepts. Each keeps accepted work inside what its workflow can
    run to an end: Temporal's timers, its 2 MB payloads and its 50 MB / 51,200-event history.
    Request models and workflows check them alike (`strict.py`); the body size is a setting.
    """

    max_duration_s: float = YEAR_S  # a stage's or a gate's timeout
    min_reminder_s: float = 1.0  # between two reminders of one gate
    max_reminders: int = 100  # per opening of a gate; then it waits quietly
    max_stages: int = 100
    max_pipelines: int = 100
    max_spec_bytes: int = 256 * 1024  # a job's stages, as JSON
    max_params_bytes: int = 64 * 1024  # a job's params, as JSON
    max_json_bytes: int = 16 * 1024  # a decision's input, an input schema, approval info
    max_json_depth: int = 32
    max_argv_items: int = 256
    max_env_items: int = 100
    max_list_items: int = 100  # approvers, scopes
    max_name_chars: int = 200
    max_text_chars: int = 4000  # reasons, notes, one argv item, one env value
    max_path_chars: int = 4096
    max_prompt_chars: int = 100_000  # an agent's prompt or instruction
    max_url_chars: int = 2048
    max_retries: int = 10
    max_approvals: int = 100
    max_int: int = 2**63 - 1  # ids and offsets: what the databases and Temporal hold


LIMITS = Limits()


class Settings(BaseSettings):
    """Every knob of Pilothouse. The embedded default needs none of them set."""

    model_config = SettingsConfigDict(
        env_prefix="PILOTHOUSE_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(Path(".pilothouse"), description="Where SQLite files and artifacts live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite in the data directory"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="API processes, for `pilothouse api`")
    temporal_address: str | None = Field(
        None, description="host:port of Temporal; default is the embedded dev server"
    )
    temporal_namespace: str = "default"
    temporal_port: int = Field(7233, ge=1, le=65535)
    ui_port: int = Field(8233, ge=1, le=65535)
    task_queue: str = "pilothouse"
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins; CORS is off when empty"
    )
    operator_file: Path | None = Field(
        None, description="YAML operator file: named pipelines and the gate of each stage"
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="A larger request body is refused with 413, unread",
    )
    token_recheck_seconds: float = Field(
        0.5,
        ge=0,
        le=0.9,
        description="How long an API process trusts a token it read as live before reading "
        "it again; at most 0.9 s, so a revoke stops a token everywhere within 1 s",
    )
    sse_keepalive_seconds: float = Field(15, gt=0)
    sse_max_seconds: float = Field(
        600, gt=0, description="An SSE stream with nothing new for this long closes (`timeout`)"
    )
    pause_new_work: bool = Field(False, description="Kill switch: refuse new runs, jobs and tasks")
    auto_approve: bool = Field(
        True, description="Kill switch: when false, gates configured to auto-approve wait"
    )
    enable_consolidated_metrics: bool = Field(
        False,
        description="Kill switch: serve /dashboard/runs/{id}/consolidated-metrics (503 when off)",
    )
    log_level: str = "info"
    public_url: str | None = Field(
        None,
        description="The API's address as operators reach it, for links in notifications; "
        "default http://<api_host>:<api_port>",
    )
    temporal_ui_url: str | None = Field(
        None,
        description="The Temporal Web UI's address, for links in notifications; "
        "default the embedded one, http://127.0.0.1:<ui_port>",
    )
    telegram_bot_token: SecretStr | None = Field(
        None, description="The Telegram bot's token; Telegram approval buttons are off without it"
    )
    telegram_chat_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Comma-separated chats that gate messages go to"
    )
    telegram_webhook_secret: SecretStr | None = Field(
        None,
        description="1-256 of A-Z a-z 0-9 _ -. Telegram sends it in "
        "X-Telegram-Bot-Api-Secret-Token; the webhook refuses every update without it",
    )
    telegram_approvers: dict[int, str] = Field(
        default_factory=dict,
        description="JSON: Telegram user id → the Pilothouse approver identity it decides as",
    )
    telegram_api_base: str = Field(
        "https://api.telegram.org/bot",
        description="The Bot API base URL, python-telegram-bot's `base_url`: the token is "
        "appended to it (a self-hosted Bot API server, or a test's fake)",
    )
    telegram_give_up_seconds: float = Field(
        60,
        gt=0,
        le=3600,
        description="How long one notification retries a Bot API that fails, then records "
        "notify.failed",
    )
    telegram_first_retry_seconds: float = Field(
        1, gt=0, le=60, description="The first pause between retries; each pause doubles"
    )
    telegram_poll_seconds: int = Field(
        30, ge=0, le=600, description="`pilothouse telegram poll`: one getUpdates long poll"
    )

    @field_validator("telegram_chat_ids", mode="before")
    @classmethod
    def _split_chats(cls, value: object) -> object:
        if isinstance(value, str):
            return [chat.strip() for chat in value.split(",") if chat.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not SECRET_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("1 to 256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("telegram_approvers")
    @classmethod
    def _approver_names(cls, value: dict[int, str]) -> dict[int, str]:
        for user, name in value.items():
            if not 0 < len(name) <= LIMITS.max_name_chars:
                raise ValueError(f"{user}: an approver is 1 to {LIMITS.max_name_chars} characters")
        return value

    # --- agent tasks ----------------------------------------------------------------------
    agent_command: str = Field(
        "claude -p {prompt} --output-format stream-json --verbose --max-turns {max_turns} "
        "--model {model} --permission-mode {mode}",
        description="The agent command template, split like a shell line; each {placeholder} "
        "fills one argument. `--resume` and `--mcp-config` are added when they apply",
    )
    agent_model: str = Field("claude-sonnet-4-20250514", max_length=200)
    agent_permission_mode: str = Field("acceptEdits", max_length=50)
    agent_idle_timeout_seconds: float = Field(
        300, gt=0, le=YEAR_S, description="An agent silent this long is killed"
    )
    agent_kill_grace_seconds: float = Field(
        15, ge=0, le=3600, description="Between SIGTERM and SIGKILL of a canceled agent"
    )
    github_api_url: str = Field("https://api.github.com", description="GitHub's REST API")
    webhook_secret: SecretStr | None = Field(
        None, description="Signs task webhooks (`X-Signature-256`); unsigned when unset"
    )
    webhook_timeout_seconds: float = Field(10, gt=0, le=300, description="Per delivery attempt")
    webhook_backoff_seconds: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 25.0],
        max_length=20,
        description="Waits between delivery attempts, as JSON: one more attempt than waits",
    )
    task_idle_ttl_seconds: float = Field(
        24 * 3600,
        gt=0,
        le=YEAR_S,
        description="A task idle this long awaiting instructions finishes; its workspace goes",
    )
    schedule_catchup_seconds: float = Field(
        600,
        ge=10,
        le=7 * 24 * 3600,
        description="A task schedule fires what it missed in this window only, so a restart "
        "after a long stop does not fire a flood of runs",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key that encrypts keys and credentials at rest; by default one "
        "is generated into the data directory on first start",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pilothouse.db').resolve()}"

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir.resolve() / "workspaces"

    @property
    def mirrors_dir(self) -> Path:
        return self.data_dir.resolve() / "mirrors"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir.resolve() / "artifacts"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def database_identity(self) -> str:
        """A short, stable hash of the database URL with any password masked."""
        masked = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.db_url)
        return hashlib.sha256(masked.encode()).hexdigest()[:12]

    @property
    def api_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def ui_url(self) -> str:
        return (self.temporal_ui_url or f"http://127.0.0.1:{self.ui_port}").rstrip("/")

    @property
    def telegram_on(self) -> bool:
        return self.telegram_bot_token is not None and bool(
            self.telegram_bot_token.get_secret_value()
        )

    @property
    def kill_switches(self) -> dict[str, bool]:
        return {
            "pause_new_work": self.pause_new_work,
            "auto_approve": self.auto_approve,
            "enable_consolidated_metrics": self.enable_consolidated_metrics,
        }
