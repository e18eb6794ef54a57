"""What a run or a task may never name as its repository or work tree: Pilothouse's own
mirrors and workspaces, which hold what other tokens fetched and other agents work on;
nor, as a run's work tree, a directory that holds Pilothouse's data directory.

The API refuses such a path in the request (api/repositories.py); the worker refuses it
again before git reads it (activities/workspaces.py), because the worker's filesystem, and
its symlinks, decide where a path leads, and it may not be the API's.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

from settings import Settings


def local_path(repo_url: str) -> str | None:
    """The absolute path git reads for a local repository, or None for a remote one. As
    git does, a file:// URL's host is ignored and its %-escapes are decoded. Taken apart
    by hand: urlsplit raises on a host such as `[x`, which the URL pattern lets through."""
    if repo_url.lower().startswith("file://"):
        _, slash, rest = repo_url[len("file://") :].partition("/")
        return unquote(slash + rest) if slash else None
    return repo_url if repo_url.startswith("/") else None


def is_own(repo_url: str, settings: Settings) -> bool:
    """Whether `repo_url`, a path or a file:// URL, leads into the mirrors or workspaces."""
    path = local_path(repo_url)
    if path is None:
        return False
    resolved = _real(path)
    return any(
        resolved.is_relative_to(_real(root))
        for root in (settings.mirrors_dir, settings.workspaces_dir)
    )


def holds_own(workdir: str, settings: Settings) -> bool:
    """Whether a work tree at `workdir` holds the data directory (`make up` in a project,
    then a run in that project): a builder's diff would stage the database and artifacts
    being written, and count them as the builder's changes."""
    return _real(settings.data_dir).is_relative_to(_real(workdir))


def _real(path: str | Path) -> Path:
    # Not Path.resolve(), which raises on a symlink loop in Python 3.11 (a 500 for a
    # path in a request); realpath leaves the loop as it is, and git then fails on it.
    return Path(os.path.realpath(path))
