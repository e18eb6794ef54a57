"""Workspaces: the git work tree a resource's steps or agent run in, and what they changed.

A run works in a directory the caller names, in a clone of a repository, or in a scratch
directory made a repository here (`prepare`). A task works in its own clone, made from a
bare mirror of the repository kept in the data directory (`clone`): the mirror is fetched
when a task starts, under a file lock so two tasks never fetch one mirror at once, and a
clone of it is a local one (its pack files hardlinked, nothing copied or sent). The clone's
`origin` is the repository itself, so a push goes there, with the credential handed over
through `GIT_ASKPASS` (store/credentials.py). A workspace is built aside and renamed into
place, so one that exists is whole: a retry or a later iteration finds it as it was left.

What a step changed is the difference between two snapshots of the work tree (git trees,
written without a commit); what a task changed is its work tree against the commit it
started from (`summary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from settings import Settings
from store import credentials
from store.credentials import CredentialRef
from store.engine import Database
from store.secrets import Secrets

GIT = (
    "git",
    "-c",
    "user.name=Pilothouse",
    "-c",
    "user.email=pilothouse@localhost",
    # Only transports that move data: never `ext::`, which runs a command.
    "-c",
    "protocol.ext.allow=never",
    # Nothing a work tree's own config names runs when we commit, check out or push.
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
)
# Talking to a remote: no credential helper of the machine's may see (or store) the token.
REMOTE = ("-c", "credential.helper=")
# Writing a work tree is most of a clone's time: one process per core writes files.
CHECKOUT = ("-c", f"checkout.workers={os.cpu_count() or 1}")
# No diff driver or text filter a work tree's config names runs either.
DIFF = ("diff", "--no-renames", "--no-ext-diff", "--no-textconv")
PATCH_EXCERPT_BYTES = 8 * 1024
OWNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
LOCK_POLL_S = 0.05
HEARTBEAT_S = 1.0


class WorkspaceIn(BaseModel):
    resource_id: str
    workdir: str | None = None
    repository: str | None = None


class Workspace(BaseModel):
    path: str


class Diff(BaseModel):
    patch_path: str | None = Field(None, description="Relative to the artifacts directory")
    patch_excerpt: str = Field("", description="The patch's start; the whole is in the file")
    files_changed: list[str] = Field(default_factory=list)
    lines_added: int = 0
    lines_removed: int = 0


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


class ChangesSummary(BaseModel):
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0


class WorkspaceInfo(BaseModel):
    owner_id: str
    path: str
    size_bytes: int
    modified_at: datetime
    branch: str | None


def workspace_error(message: str) -> ApplicationError:
    return ApplicationError(message, type="WorkspaceError", non_retryable=True)


async def _run(
    cwd: Path, args: tuple[str, ...], env: Mapping[str, str] | None, stdin: bytes | None
) -> tuple[int, str, str]:
    """One git command. It heartbeats while it runs inside an activity (a fetch can be
    long), and a canceled activity kills it."""
    process = await asyncio.create_subprocess_exec(
        *GIT,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own group, so a cancel also ends what git started (a remote helper, ssh).
        start_new_session=True,
    )
    talking = asyncio.ensure_future(process.communicate(stdin))
    try:
        while not (await asyncio.wait({talking}, timeout=HEARTBEAT_S))[0]:
            if activity.in_activity():
                activity.heartbeat()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(talking)
        raise
    out, err = talking.result()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def git(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    secret: str | None = None,
    stdin: bytes | None = None,
) -> str:
    """Runs git; a failure is a WorkspaceError whose text has no URL user info and no
    `secret` in it (git may echo a URL it was given)."""
    code, out, err = await _run(cwd, args, env, stdin)
    if code != 0:
        said = credentials.redact(err.strip()[-500:], secret)
        raise workspace_error(f"git {args[0]} failed in {cwd}: {said}")
    return out


def _refuse_embedded_password(url: str) -> None:
    if re.match(r"(?i)[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", url):
        raise workspace_error(
            "a repository URL must not carry a password; pass the token as a credential"
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
        if w.workdir:
            path = Path(w.workdir)
            if not await asyncio.to_thread(path.is_dir):
                raise workspace_error(f"workdir {w.workdir} is not a directory")
            await git(path, "rev-parse", "--is-inside-work-tree")
            return Workspace(path=str(path))
        path = self.data_dir.resolve() / "workspaces" / w.resource_id
        if await asyncio.to_thread((path / ".git").is_dir):
            return Workspace(path=str(path))  # a retried attempt: it was made already
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        if w.repository:
            await git(path.parent, "clone", "--quiet", "--", w.repository, str(path))
        else:
            await git(path, "init", "--quiet")
            await git(path, "commit", "--quiet", "--allow-empty", "-m", "pilothouse: start")
        return Workspace(path=str(path))

    async def _token(self, ref: CredentialRef | None) -> str | None:
        if ref is None:
            return None
        if self._secrets is None:
            self._secrets = Secrets.of(self.settings)
        return await credentials.resolve(self.db, self._secrets, ref)

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
        _refuse_embedded_password(c.repo_url)
        token = await self._token(c.credential)
        aside = self._aside(c.owner_id)
        await asyncio.to_thread(aside.parent.mkdir, parents=True, exist_ok=True)
        try:
            async with self._mirror(c.repo_url, token, c.target_branch is None) as mirror:
                base_branch = (
                    c.target_branch
                    or (await git(mirror, "symbolic-ref", "--short", "HEAD")).strip()
                )
                code, out, _ = await _run(
                    mirror,
                    ("rev-parse", "--verify", "--quiet", f"refs/heads/{base_branch}^{{commit}}"),
                    None,
                    None,
                )
                if code != 0:
                    url = credentials.redact(c.repo_url, token)
                    raise workspace_error(f"branch {base_branch!r} does not exist in {url}")
                base_commit = out.strip()
                # A local clone: the mirror's packs are hardlinked. No checkout yet, so the
                # lock is held for milliseconds only.
                await git(
                    aside.parent,
                    "clone",
                    "--quiet",
                    "--local",
                    "--no-checkout",
                    "--config",
                    f"pilothouse.baseBranch={base_branch}",
                    "--config",
                    f"pilothouse.baseCommit={base_commit}",
                    "--",
                    str(mirror),
                    str(aside),
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

    def mirror_path(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        return self.settings.mirrors_dir / f"{key}.git"

    @contextlib.asynccontextmanager
    async def _mirror(self, url: str, token: str | None, want_head: bool) -> AsyncIterator[Path]:
        """The repository's bare mirror, made or fetched now, held locked while in use."""
        mirror = self.mirror_path(url)
        mirrors, key = mirror.parent, mirror.name.removesuffix(".git")
        await asyncio.to_thread(mirrors.mkdir, parents=True, exist_ok=True)
        env = credentials.git_env(self.data_dir, token)
        async with _locked(mirrors / f"{key}.lock"):
            if await asyncio.to_thread((mirror / "HEAD").is_file):
                await git(
                    mirror, *REMOTE, "fetch", "--quiet", "--prune", "origin", env=env, secret=token
                )
                if want_head:  # the remote's default branch may have changed since
                    said = await git(
                        mirror,
                        *REMOTE,
                        "ls-remote",
                        "--symref",
                        "origin",
                        "HEAD",
                        env=env,
                        secret=token,
                    )
                    head = re.match(r"ref: (refs/heads/\S+)\tHEAD", said)
                    if head:
                        await git(mirror, "symbolic-ref", "HEAD", head.group(1))
            else:
                aside = mirrors / f"{key}.git.tmp"  # ours alone: the lock is held
                await asyncio.to_thread(shutil.rmtree, aside, True)
                # --no-local: a local origin is read as a pack, not as hardlinked loose files.
                await git(
                    mirrors,
                    *REMOTE,
                    "clone",
                    "--quiet",
                    "--bare",
                    "--no-local",
                    "--",
                    url,
                    str(aside),
                    env=env,
                    secret=token,
                )
                await git(aside, "config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
                await git(
                    aside, "config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*"
                )
                await asyncio.to_thread(os.rename, aside, mirror)
            yield mirror

    @activity.defn(name="workspaces.scratch")
    async def scratch(self, s: ScratchIn) -> Clone:
        path = self._path(s.owner_id)
        if await asyncio.to_thread((path / ".git").is_dir):
            return await _existing(path, "main")
        aside = self._aside(s.owner_id)
        await asyncio.to_thread(aside.mkdir, parents=True)
        try:
            await git(aside, "init", "--quiet", "--initial-branch=main")
            await git(aside, "commit", "--quiet", "--allow-empty", "-m", "pilothouse: start")
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
        _refuse_embedded_password(p.repo_url)
        await git(path, "add", "--all")
        staged, _, _ = await _run(path, ("diff", "--cached", "--quiet"), None, None)
        if staged == 1:
            await git(path, "commit", "--quiet", "--no-verify", "-m", p.message)
        commit = (await git(path, "rev-parse", "HEAD")).strip()
        base = await _config(path, "pilothouse.baseCommit")
        if commit == base:
            return Published(commit=commit, branch=p.branch, pushed=False)
        # The token goes only where the task's URL says: a work tree's config could send it
        # elsewhere (its origin is the agent's to change; a url.*.insteadOf rewrites any).
        if (await _run(path, ("config", "--local", "--get-regexp", r"^url\."), None, None))[0] == 0:
            raise workspace_error("the workspace's git config rewrites URLs: nothing was pushed")
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


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on a file, across processes and within one (flock locks belong to
    an open file). Polled, so a canceled waiter leaves no thread behind holding it."""
    fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _rename_into_place(aside: Path, path: Path) -> bool:
    try:
        os.rename(aside, path)
    except OSError:
        if (path / ".git").is_dir():
            return False
        raise workspace_error(f"{path} is in the way of a workspace") from None
    return True


async def _config(path: Path, key: str) -> str | None:
    code, out, _ = await _run(path, ("config", "--get", key), None, None)
    return out.strip() if code == 0 else None


async def _existing(path: Path, branch: str) -> Clone:
    code, head, _ = await _run(path, ("symbolic-ref", "--short", "-q", "HEAD"), None, None)
    base_branch = await _config(path, "pilothouse.baseBranch")
    base_commit = await _config(path, "pilothouse.baseCommit")
    if base_commit is None:
        base_commit = (await git(path, "rev-parse", "HEAD")).strip()
    return Clone(
        path=str(path),
        branch=head.strip() if code == 0 else branch,
        base_branch=base_branch or branch,
        base_commit=base_commit,
        reused=True,
    )


async def snapshot(path: Path) -> str:
    """The work tree as it is, as a git tree id. Touches no branch and no commit."""
    await git(path, "add", "--all")
    return (await git(path, "write-tree")).strip()


def _numstat(text: str) -> tuple[list[str], int, int]:
    files, added, removed = [], 0, 0
    for line in text.splitlines():
        plus, minus, name = line.split("\t", 2)
        files.append(name)
        # Binary files count as changed, with no lines.
        added += int(plus) if plus.isdigit() else 0
        removed += int(minus) if minus.isdigit() else 0
    return files, added, removed


async def changes(path: Path, before: str, artifacts: Path, patch_file: Path) -> Diff:
    """What changed in the work tree since `before`; the patch goes to `artifacts/patch_file`."""
    after = await snapshot(path)
    files, added, removed = _numstat(await git(path, *DIFF, "--numstat", before, after))
    if not files:
        return Diff()
    patch = await git(path, *DIFF, before, after)
    target = artifacts / patch_file
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(target.write_text, patch)
    return Diff(
        patch_path=str(patch_file),
        patch_excerpt=patch[:PATCH_EXCERPT_BYTES],
        files_changed=files,
        lines_added=added,
        lines_removed=removed,
    )


async def summary(path: Path, base: str) -> ChangesSummary:
    """The work tree (committed, staged, unstaged and untracked) against `base`. Staged
    through a copy of the index, so the work tree's own index is left as it is."""
    git_dir = path / (await git(path, "rev-parse", "--git-dir")).strip()
    index = git_dir / f"pilothouse-summary-{uuid.uuid4().hex[:8]}.index"
    if await asyncio.to_thread((git_dir / "index").is_file):
        await asyncio.to_thread(shutil.copyfile, git_dir / "index", index)
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    try:
        await git(path, "add", "--all", env=env)
        tree = (await git(path, "write-tree", env=env)).strip()
    finally:
        await asyncio.to_thread(index.unlink, True)
    files, added, removed = _numstat(await git(path, *DIFF, "--numstat", base, tree))
    return ChangesSummary(files_changed=len(files), insertions=added, deletions=removed)


async def checkout(path: Path, commit: str) -> None:
    """The work tree at `commit`, detached; uncommitted changes that would be lost refuse."""
    if commit.startswith("-"):
        raise workspace_error(f"{commit!r} is not a commit")
    await git(path, *CHECKOUT, "checkout", "--quiet", "--detach", commit, "--")


async def apply_patch(path: Path, patch: str) -> None:
    """`git apply`: the whole patch or, when any part does not apply, nothing."""
    if not patch.strip():
        return
    code, _, err = await _run(path, ("apply", "--whitespace=nowarn", "-"), None, patch.encode())
    if code != 0:
        raise workspace_error(f"the patch does not apply in {path}: {err.strip()[-500:]}")


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
