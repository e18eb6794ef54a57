"""What a task or a run may name as its repository, or a run as its work tree, beyond its
shape (`task_spec.RepoUrl`): never a mirror or a workspace of Pilothouse's own
(activities/own_paths.py)."""

from __future__ import annotations

from activities.own_paths import is_own
from api.errors import ApiError
from settings import Settings


def check_repository(repo_url: str | None, settings: Settings, field: str = "repo_url") -> None:
    """Refuse `repo_url` (named `field` in the request) when it is a local path or file://
    URL inside Pilothouse's mirrors or workspaces."""
    if repo_url and is_own(repo_url, settings):
        raise ApiError(
            422, "REPOSITORY_NOT_ALLOWED", f"{field}: a mirror or workspace of Pilothouse's own"
        )
