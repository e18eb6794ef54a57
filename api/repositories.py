"""What a task or a run may name as its repository, or a run as its work tree, beyond its
shape (`task_spec.RepoUrl`): never a mirror or a workspace of Pilothouse's own, which hold
what others' tokens fetched."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from api.errors import ApiError
from settings import Settings


def check_repository(repo_url: str | None, settings: Settings, field: str = "repo_url") -> None:
    """Refuse `repo_url` (named `field` in the request) when it is a local path or file://
    URL inside Pilothouse's mirrors or workspaces."""
    if repo_url and any(
        _inside(repo_url, d) for d in (settings.mirrors_dir, settings.workspaces_dir)
    ):
        raise ApiError(
            422, "REPOSITORY_NOT_ALLOWED", f"{field}: a mirror or workspace of Pilothouse's own"
        )


def _inside(repo_url: str, root: Path) -> bool:
    """Whether a local repository (a path or a file:// URL) lies under `root`."""
    return (path := local_path(repo_url)) is not None and Path(path).resolve().is_relative_to(
        root.resolve()
    )


def local_path(repo_url: str) -> str | None:
    """The absolute path git reads for a local repository, or None for a remote one. As
    git does, a file:// URL's host is ignored and its %-escapes are decoded."""
    is_url = repo_url.lower().startswith("file://")
    path = unquote(urlsplit(repo_url).path) if is_url else repo_url
    return path if path.startswith("/") else None
