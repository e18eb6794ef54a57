"""What a task or a run may name as its repository, or a run as its work tree, beyond its
shape (`task_spec.RepoUrl`): never a mirror or a workspace of Pilothouse's own, nor a work
tree that holds its data directory (activities/own_paths.py)."""

from __future__ import annotations

from activities.own_paths import holds_own, is_own
from api.errors import ApiError
from settings import Settings


def check_repository(repo_url: str | None, settings: Settings, field: str = "repo_url") -> None:
    """Refuse `repo_url` (named `field` in the request) when it is a local path or file://
    URL inside Pilothouse's mirrors or workspaces."""
    if repo_url and is_own(repo_url, settings):
        raise ApiError(
            422, "REPOSITORY_NOT_ALLOWED", f"{field}: a mirror or workspace of Pilothouse's own"
        )


def check_workdir(workdir: str | None, settings: Settings) -> None:
    """Refuse a run's `workdir` that is relative, is one of Pilothouse's own paths, or holds
    the data directory. Checked here, not in RunSpec, which the workflow checks again: runs
    that took a relative workdir before keep replaying as they ran."""
    if workdir is None:
        return
    if not workdir.startswith("/"):
        raise ApiError(
            422, "VALIDATION_ERROR", "run.workdir: an absolute path on the worker's host"
        )
    check_repository(workdir, settings, "run.workdir")
    if holds_own(workdir, settings):
        raise ApiError(
            422,
            "REPOSITORY_NOT_ALLOWED",
            "run.workdir: holds Pilothouse's data directory; set PILOTHOUSE_DATA_DIR outside it",
        )
