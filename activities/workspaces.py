"""Workspaces: the git work tree a resource's steps or agent run in.

A run works in a directory the caller names, in a clone of a repository, or in a scratch
directory made a repository here (`prepare`). A task works in its own clone, made from a
bare mirror of the repository kept in the data directory (`clone`, activities/mirrors.py).
The clone's `origin` is the repository itself, so a push goes there, with the credential
handed over through `GIT_ASKPASS` (store/credentials.py). A workspace is built aside and
renamed into place, so one that exists is whole: a retry or a later iteration finds it as
it was left. What a work tree changed is activities/work_trees.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity

from activities.empty_repository import make_empty_repository
from activities.git import (
    CHECKOUT,
    REMOTE,
    config_value,
    git,
    refuse_embedded_password,
    run_git,
    workspace_error,
)
from activities.mirrors import clone_from_mirror
from activities.own_paths import holds_own, is_own
from settings import Settings
from store import credentials
from store.credentials import CredentialRef
from store.engine import Database
from store.secrets import Secrets

OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class WorkspaceIn(BaseModel):
    resource_id: str
    workdir: str | None = None
    repository: str | None = None


class Workspace(BaseModel):
    path: str


class CloneIn(BaseModel):
    owner_id: str = Field(description="Names the workspace: settings.workspaces_dir / owner_id")
    repo_url: str
    credential: CredentialRef | None = None
    target_branch: str | None = Field(None, description="None: the remote's default branch")
    branch: str = Field(description="The working branch to create, `pilothouse/task-<id>`")


class Clone(BaseModel):
    path: str
    branch: str
    base_branch: str
    base_commit: str
    reused: bool = Field(description="The workspace existed already and was left as it is")


class ScratchIn(BaseModel):
    owner_id: str


class WorkspaceRef(BaseModel):
    owner_id: str


class PublishIn(BaseModel):
    owner_id: str
    repo_url: str
    credential: CredentialRef | None = None
    branch: str
    message: str = Field(description="The commit message")


class Published(BaseModel):
    commit: str
    branch: str
    pushed: bool = Field(description="False when nothing was made since the base commit")


class WorkspaceInfo(BaseModel):
    owner_id: str
    path: str
    size_bytes: int
    modified_at: datetime
    branch: str | None


# Config that could take a push (and its token) somewhere else than the task's URL.
REDIRECTING = (
    r"^(url\..*|core\.(sshcommand|gitproxy|askpass)|http\..*(proxy|extraheader)|credential\..*)$"
)


class Workspaces:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.data_dir = settings.data_dir
        self.artifacts_dir = settings.artifacts_dir
        self._secrets: Secrets | None = None

    @activity.defn(name="workspaces.prepare")
    async def prepare(self, w: WorkspaceIn) -> Workspace:
        for name, named in (("workdir", w.workdir), ("repository", w.repository)):
            if named is not None:
                await self._refuse_own(named, f"{name} {named}")
        if w.workdir:
            path = Path(w.workdir)
            if not await asyncio.to_thread(path.is_dir):
                raise workspace_error(f"workdir {w.workdir} is not a directory")
            # A builder's diff covers the whole work tree, not only the directory named.
            top = (await git(path, "rev-parse", "--show-toplevel")).strip()
            if await asyncio.to_thread(holds_own, top, self.settings):
                raise workspace_error(
                    f"workdir {w.workdir}: its work tree holds Pilothouse's data directory"
                )
            return Workspace(path=str(path))
        path = self.settings.workspaces_dir / w.resource_id
        if await asyncio.to_thread((path / ".git").is_dir):
            return Workspace(path=str(path))  # a retried attempt: it was made already
        aside = self._aside(w.resource_id)
        await asyncio.to_thread(self.settings.workspaces_dir.mkdir, parents=True, exist_ok=True)
        try:
            if w.repository:
                await git(
                    self.settings.workspaces_dir, "clone", "--quiet", "--", w.repository, str(aside)
                )
            else:
                await make_empty_repository(self.settings.workspaces_dir, aside)
            await asyncio.to_thread(_rename_into_place, aside, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, aside, True)
        return Workspace(path=str(path))

    async def _token(self, ref: CredentialRef | None) -> str | None:
        if ref is None:
            return None
        if self._secrets is None:
            self._secrets = Secrets.of(self.settings)
        return await credentials.resolve(self.db, self._secrets, ref)

    async def _refuse_own(self, repo_url: str, said: str) -> None:
        """Checked again here, where git runs: this host's symlinks decide where it leads."""
        if await asyncio.to_thread(is_own, repo_url, self.settings):
            raise workspace_error(f"{said}: a mirror or workspace of Pilothouse's own")

    def _path(self, owner_id: str) -> Path:
        if not OWNER_ID.fullmatch(owner_id):
            raise workspace_error(f"{owner_id!r} cannot name a workspace directory")
        return self.settings.workspaces_dir / owner_id

    def _aside(self, owner_id: str) -> Path:
        """Where a workspace is built before it is renamed into place."""
        return self.settings.workspaces_dir / f".{owner_id}.{uuid.uuid4().hex[:8]}.tmp"

    @activity.defn(name="workspaces.clone")
    async def clone(self, c: CloneIn) -> Clone:
        path = self._path(c.owner_id)
        if await asyncio.to_thread((path / ".git").is_dir):
            return await _existing(path, c.branch)
        refuse_embedded_password(c.repo_url)
        await self._refuse_own(c.repo_url, c.repo_url)
        token = await self._token(c.credential)
        aside = self._aside(c.owner_id)
        await asyncio.to_thread(aside.parent.mkdir, parents=True, exist_ok=True)
        try:
            base_branch, base_commit = await clone_from_mirror(
                self.settings, c.repo_url, token, c.target_branch, aside
            )
            await git(aside, "remote", "set-url", "origin", c.repo_url)
            await git(aside, *CHECKOUT, "checkout", "--quiet", "-b", c.branch, base_commit)
            if not await asyncio.to_thread(_rename_into_place, aside, path):
                return await _existing(path, c.branch)  # an overlapping attempt made it first
        finally:
            await asyncio.to_thread(shutil.rmtree, aside, True)
        return Clone(
            path=str(path),
            branch=c.branch,
            base_branch=base_branch,
            base_commit=base_commit,
            reused=False,
        )

    @activity.defn(name="workspaces.scratch")
    async def scratch(self, s: ScratchIn) -> Clone:
        path = self._path(s.owner_id)
        if await asyncio.to_thread((path / ".git").is_dir):
            return await _existing(path, "main")
        aside = self._aside(s.owner_id)
        try:
            await make_empty_repository(self.settings.workspaces_dir, aside)
            commit = (await git(aside, "rev-parse", "HEAD")).strip()
            await git(aside, "config", "pilothouse.baseBranch", "main")
            await git(aside, "config", "pilothouse.baseCommit", commit)
            if not await asyncio.to_thread(_rename_into_place, aside, path):
                return await _existing(path, "main")
        finally:
            await asyncio.to_thread(shutil.rmtree, aside, True)
        return Clone(
            path=str(path), branch="main", base_branch="main", base_commit=commit, reused=False
        )

    @activity.defn(name="workspaces.delete")
    async def delete(self, w: WorkspaceRef) -> bool:
        path = self._path(w.owner_id)
        existed = await asyncio.to_thread(path.exists)
        # Also what a clone cut short by a worker's death left aside.
        leftovers = await asyncio.to_thread(lambda: list(path.parent.glob(f".{w.owner_id}.*.tmp")))
        for gone in [path, *leftovers]:
            await asyncio.to_thread(shutil.rmtree, gone, True)
        return existed

    @activity.defn(name="workspaces.publish")
    async def publish(self, p: PublishIn) -> Published:
        path = self._path(p.owner_id)
        if not await asyncio.to_thread((path / ".git").is_dir):
            raise workspace_error(f"there is no workspace for {p.owner_id}")
        refuse_embedded_password(p.repo_url)
        await git(path, "add", "--all")
        staged, _, _ = await run_git(path, ("diff", "--cached", "--quiet"), None, None)
        if staged == 1:
            await git(path, "commit", "--quiet", "--no-verify", "-m", p.message)
        commit = (await git(path, "rev-parse", "HEAD")).strip()
        base = await config_value(path, "pilothouse.baseCommit")
        if commit == base:
            return Published(commit=commit, branch=p.branch, pushed=False)
        # The token goes only where the task's URL says: the work tree's config is the
        # agent's to change, and could send it elsewhere (included files count too).
        found = await run_git(
            path, ("config", "--local", "--includes", "--get-regexp", REDIRECTING), None, None
        )
        if found[0] == 0:
            raise workspace_error(
                "the workspace's git config redirects or rewrites remotes: nothing was pushed"
            )
        token = await self._token(p.credential)
        await git(
            path,
            *REMOTE,
            "push",
            "--quiet",
            "--force",
            "--",
            p.repo_url,
            f"HEAD:refs/heads/{p.branch}",
            env=credentials.git_env(self.data_dir, token),
            secret=token,
        )
        return Published(commit=commit, branch=p.branch, pushed=True)


def _rename_into_place(aside: Path, path: Path) -> bool:
    try:
        os.rename(aside, path)
    except OSError:
        if (path / ".git").is_dir():
            return False
        raise workspace_error(f"{path} is in the way of a workspace") from None
    return True


async def _existing(path: Path, branch: str) -> Clone:
    code, head, _ = await run_git(path, ("symbolic-ref", "--short", "-q", "HEAD"), None, None)
    base_branch = await config_value(path, "pilothouse.baseBranch")
    base_commit = await config_value(path, "pilothouse.baseCommit")
    if base_commit is None:
        base_commit = (await git(path, "rev-parse", "HEAD")).strip()
    return Clone(
        path=str(path),
        branch=head.strip() if code == 0 else branch,
        base_branch=base_branch or branch,
        base_commit=base_commit,
        reused=True,
    )


def list_workspaces(settings: Settings) -> list[WorkspaceInfo]:
    """Every workspace in the data directory, with its size and last change (blocking)."""
    root = settings.workspaces_dir
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # a workspace still being built aside
        size, latest = _tree_size(entry)
        head = entry / ".git" / "HEAD"
        text = head.read_text().strip() if head.is_file() else ""
        found.append(
            WorkspaceInfo(
                owner_id=entry.name,
                path=str(entry),
                size_bytes=size,
                modified_at=datetime.fromtimestamp(latest, UTC),
                branch=text.removeprefix("ref: refs/heads/") if text.startswith("ref: ") else None,
            )
        )
    return found


def _tree_size(root: Path) -> tuple[int, float]:
    size, latest = 0, root.lstat().st_mtime
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                stat = os.lstat(os.path.join(folder, name))
                size += stat.st_size if name in files else 0
                latest = max(latest, stat.st_mtime)
    return size, latest
