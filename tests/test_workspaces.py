"""Workspaces: a mirror per repository and a clone per owner, credentials through
GIT_ASKPASS against a real smart-HTTP server, publishing, and what a work tree changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.mirrors import mirror_path
from activities.own_paths import is_own
from activities.work_trees import apply_patch, checkout, summary
from activities.workspaces import (
    CloneIn,
    PublishIn,
    ScratchIn,
    WorkspaceIn,
    WorkspaceRef,
    Workspaces,
    list_workspaces,
)
from settings import Settings
from store.credentials import CredentialRef, redact
from store.engine import Database
from store.models import Key, Task
from store.secrets import Secrets
from tests.git_servers import branch_of, commit_to, git_http, make_origin, run_git

TOKEN = "ghp_s3cr3tTokenValue1234567890"
env = ActivityEnvironment()


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Workspaces]:
    """Workspaces with no database in use: these tests pass no credential."""
    settings = Settings(data_dir=tmp_path / "data", _env_file=None)
    db = Database(settings.db_url)
    yield Workspaces(db, settings)
    await db.dispose()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path / "remotes")


def clone_in(origin: Path | str, owner: str = "task-a", **extra: object) -> CloneIn:
    return CloneIn(owner_id=owner, repo_url=str(origin), branch=f"pilothouse/{owner}", **extra)


async def failure(call: object) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def test_a_clone_starts_a_branch_from_the_default_branch(
    local: Workspaces, origin: Path
) -> None:
    made = await env.run(local.clone, clone_in(origin))
    path = Path(made.path)
    assert path == local.settings.workspaces_dir / "task-a" and not made.reused
    assert (made.branch, made.base_branch) == ("pilothouse/task-a", "main")
    assert made.base_commit == branch_of(origin, "main")
    assert run_git(path, "symbolic-ref", "--short", "HEAD").strip() == "pilothouse/task-a"
    assert (path / "app.py").is_file() and not (path / "develop.txt").exists()
    # Pushes go to the repository, not to the mirror the clone was made from.
    assert run_git(path, "remote", "get-url", "origin").strip() == str(origin)
    assert run_git(path, "status", "--porcelain") == ""


async def test_a_clone_from_a_target_branch(local: Workspaces, origin: Path) -> None:
    made = await env.run(local.clone, clone_in(origin, target_branch="develop"))
    assert made.base_branch == "develop" and made.base_commit == branch_of(origin, "develop")
    assert (Path(made.path) / "develop.txt").read_text() == "only on develop\n"


async def test_an_unknown_target_branch_is_a_workspace_error_and_leaves_nothing(
    local: Workspaces, origin: Path
) -> None:
    error = await failure(env.run(local.clone, clone_in(origin, target_branch="nope")))
    assert error.type == "WorkspaceError" and error.non_retryable
    assert "'nope' does not exist" in error.message
    assert sorted(p.name for p in local.settings.workspaces_dir.iterdir()) == []


async def test_an_unreachable_repository_is_a_workspace_error(
    local: Workspaces, tmp_path: Path
) -> None:
    error = await failure(env.run(local.clone, clone_in(tmp_path / "nowhere.git")))
    assert error.type == "WorkspaceError" and error.non_retryable
    assert not (local.settings.workspaces_dir / "task-a").exists()


async def test_a_second_clone_reuses_the_workspace_as_it_was_left(
    local: Workspaces, origin: Path
) -> None:
    first = await env.run(local.clone, clone_in(origin, target_branch="develop"))
    (Path(first.path) / "app.py").write_text("print('edited')\n")
    again = await env.run(local.clone, clone_in(origin, target_branch="develop"))
    assert again.reused and again.path == first.path
    assert (again.base_branch, again.base_commit) == (first.base_branch, first.base_commit)
    assert (Path(again.path) / "app.py").read_text() == "print('edited')\n"


async def test_the_mirror_is_fetched_when_a_later_owner_clones(
    local: Workspaces, origin: Path
) -> None:
    a = await env.run(local.clone, clone_in(origin, "task-a"))
    newer = commit_to(origin, "main", "new.txt", "newer\n")
    b = await env.run(local.clone, clone_in(origin, "task-b"))
    assert a.path != b.path and b.base_commit == newer != a.base_commit
    assert (Path(b.path) / "new.txt").is_file() and not (Path(a.path) / "new.txt").exists()
    assert [p.name for p in local.settings.mirrors_dir.glob("*.git")] == [
        Path(mirror_path(local.settings, str(origin))).name
    ]


async def test_a_mirror_is_fetched_once_at_a_time(local: Workspaces, origin: Path) -> None:
    owners = [f"task-{n}" for n in range(4)]
    made = await asyncio.gather(*(env.run(local.clone, clone_in(origin, o)) for o in owners))
    assert {m.base_commit for m in made} == {branch_of(origin, "main")}
    assert len(list(local.settings.mirrors_dir.glob("*.git"))) == 1
    assert not list(local.settings.mirrors_dir.glob("*.tmp"))


async def test_the_default_branch_follows_the_remote(local: Workspaces, origin: Path) -> None:
    await env.run(local.clone, clone_in(origin, "task-a"))
    run_git(origin, "symbolic-ref", "HEAD", "refs/heads/develop")
    later = await env.run(local.clone, clone_in(origin, "task-b"))
    assert later.base_branch == "develop"


async def test_an_owner_id_that_is_not_one_directory_is_refused(
    local: Workspaces, origin: Path
) -> None:
    for owner in ("../escape", "a/b", ".hidden", ""):
        error = await failure(
            env.run(local.clone, clone_in(origin).model_copy(update={"owner_id": owner}))
        )
        assert error.type == "WorkspaceError"


async def test_the_worker_refuses_its_own_mirrors_and_workspaces(
    local: Workspaces, origin: Path, tmp_path: Path
) -> None:
    """Checked where git runs, whatever the API saw: a symlink made on the worker's host
    leads into the mirrors, and the workspace is not made."""
    await env.run(local.clone, clone_in(origin))  # a mirror of origin, and task-a's tree
    mirrors, workspaces = local.settings.mirrors_dir, local.settings.workspaces_dir
    mirror = next(p for p in mirrors.iterdir() if p.suffix == ".git")
    link = tmp_path / "innocent.git"
    link.symlink_to(mirror)
    calls = [
        env.run(local.clone, clone_in(link, owner="task-b")),
        env.run(local.clone, clone_in(f"file://localhost{mirror}", owner="task-b")),
        env.run(local.prepare, WorkspaceIn(resource_id="run-1", repository=str(link))),
        env.run(
            local.prepare, WorkspaceIn(resource_id="run-1", workdir=str(workspaces / "task-a"))
        ),
    ]
    for call in calls:
        error = await failure(call)
        assert error.type == "WorkspaceError" and "of Pilothouse's own" in error.message
    assert not (workspaces / "task-b").exists() and not (workspaces / "run-1").exists()
    # A work tree around the data directory: a builder's diff would take in the database,
    # whichever of its directories the run names.
    around = local.settings.data_dir.parent
    run_git(around, "init", "--quiet")
    (around / "src").mkdir()
    for workdir in (around, around / "src"):
        error = await failure(
            env.run(local.prepare, WorkspaceIn(resource_id="run-1", workdir=str(workdir)))
        )
        assert error.type == "WorkspaceError"
        assert "holds Pilothouse's data directory" in error.message
    # A symlink loop is no directory, said as such, where Path.resolve() raised.
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert not is_own(str(loop), local.settings)
    error = await failure(
        env.run(local.prepare, WorkspaceIn(resource_id="run-1", workdir=str(loop)))
    )
    assert error.type == "WorkspaceError" and "is not a directory" in error.message


async def test_a_password_in_the_url_is_refused_without_saying_it(local: Workspaces) -> None:
    error = await failure(
        env.run(local.clone, clone_in(f"https://me:{TOKEN}@example.invalid/o/r.git"))
    )
    assert error.type == "WorkspaceError" and TOKEN not in error.message


def test_redact_strips_user_info_and_masks_the_secret() -> None:
    said = f"fatal: unable to access 'https://x:{TOKEN}@host/r.git/': {TOKEN} refused"
    assert redact(said, TOKEN) == "fatal: unable to access 'https://host/r.git/': *** refused"


# --- credentials over smart HTTP -------------------------------------------------------------


async def register_key(db: Database, settings: Settings, name: str, token: str) -> None:
    async with db.session() as session:
        session.add(
            Key(
                name=name,
                provider="github",
                token=Secrets.of(settings).encrypt(token),
                created_by="test",
            )
        )
        await session.commit()


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


async def test_a_token_reaches_git_through_askpass_and_nowhere_else(
    settings: Settings, db: Database, tmp_path_factory: pytest.TempPathFactory, argv_log: Path
) -> None:
    remotes = tmp_path_factory.mktemp("remotes")
    make_origin(remotes, "repo.git")
    await register_key(db, settings, "gh", TOKEN)
    workspaces = Workspaces(db, settings)
    with git_http(remotes, TOKEN) as server:
        url = server.url("repo.git")
        made = await env.run(
            workspaces.clone, clone_in(url, credential=CredentialRef(kind="key", id="gh"))
        )
        assert (Path(made.path) / "app.py").is_file()
        # git asked without credentials, was told 401, and came back with the token.
        assert server.seen[0].authorization is None
        assert any(s.authorization for s in server.seen)
    mirror = mirror_path(settings, url)
    assert run_git(Path(made.path), "remote", "get-url", "origin").strip() == url
    assert run_git(mirror, "remote", "get-url", "origin").strip() == url
    assert "clone" in argv_log.read_text() and TOKEN not in argv_log.read_text()
    assert files_holding(settings.data_dir, TOKEN) == []


async def test_a_wrong_token_fails_without_being_said(
    settings: Settings, db: Database, tmp_path_factory: pytest.TempPathFactory
) -> None:
    remotes = tmp_path_factory.mktemp("remotes")
    make_origin(remotes, "repo.git")
    wrong = "ghp_wrongTokenValue0987654321"
    await register_key(db, settings, "gh", wrong)
    workspaces = Workspaces(db, settings)
    with git_http(remotes, TOKEN) as server:
        ref = CredentialRef(kind="key", id="gh")
        error = await failure(
            env.run(workspaces.clone, clone_in(server.url("repo.git"), credential=ref))
        )
    assert error.type == "WorkspaceError" and error.non_retryable
    assert "Authentication failed" in error.message and wrong not in str(error.message)
    assert not (settings.workspaces_dir / "task-a").exists()


async def test_an_unknown_key_is_credential_missing(
    settings: Settings, db: Database, origin: Path
) -> None:
    ref = CredentialRef(kind="key", id="never-registered")
    error = await failure(env.run(Workspaces(db, settings).clone, clone_in(origin, credential=ref)))
    assert error.type == "CredentialMissing" and error.non_retryable


async def test_publish_pushes_over_http_with_the_task_credential(
    settings: Settings, db: Database, tmp_path_factory: pytest.TempPathFactory, argv_log: Path
) -> None:
    remotes = tmp_path_factory.mktemp("remotes")
    origin = make_origin(remotes, "repo.git")
    async with db.session() as session:
        credential = Secrets.of(settings).encrypt(TOKEN)
        session.add(Task(id="task-a", prompt="p", trace_id="t", owner="o", credential=credential))
        await session.commit()
    ref = CredentialRef(kind="task", id="task-a")
    workspaces = Workspaces(db, settings)
    with git_http(remotes, TOKEN) as server:
        url = server.url("repo.git")
        made = await env.run(workspaces.clone, clone_in(url, credential=ref))
        (Path(made.path) / "fix.txt").write_text("fixed\n")
        publish = PublishIn(
            owner_id="task-a", repo_url=url, credential=ref, branch=made.branch, message="Fix it"
        )
        published = await env.run(workspaces.publish, publish)
        pushes = [s for s in server.seen if s.method == "POST" and "receive-pack" in s.path]
    assert published.pushed and branch_of(origin, made.branch) == published.commit
    assert pushes and all(s.authorization for s in pushes)
    assert TOKEN not in argv_log.read_text() and files_holding(settings.data_dir, TOKEN) == []


# --- publishing, locally ---------------------------------------------------------------------


async def test_publish_commits_pushes_and_is_the_same_on_retry(
    local: Workspaces, origin: Path
) -> None:
    made = await env.run(local.clone, clone_in(origin))
    path = Path(made.path)
    (path / "app.py").write_text("print('two')\n")
    (path / "notes.txt").write_text("new\n")
    publish = PublishIn(
        owner_id="task-a", repo_url=str(origin), branch=made.branch, message="Edit app"
    )
    first = await env.run(local.publish, publish)
    assert first.pushed and branch_of(origin, made.branch) == first.commit
    assert (
        run_git(origin, "log", "-1", "--format=%an|%s", first.commit).strip()
        == "Pilothouse|Edit app"
    )
    assert run_git(origin, "rev-parse", f"{first.commit}^").strip() == made.base_commit
    again = await env.run(local.publish, publish)
    assert again == first


async def test_publish_with_nothing_made_pushes_nothing(local: Workspaces, origin: Path) -> None:
    made = await env.run(local.clone, clone_in(origin))
    publish = PublishIn(owner_id="task-a", repo_url=str(origin), branch=made.branch, message="m")
    published = await env.run(local.publish, publish)
    assert not published.pushed and published.commit == made.base_commit
    assert branch_of(origin, made.branch) is None


@pytest.mark.parametrize(
    "how", ["insteadOf", "included insteadOf", "proxy", "extraHeader", "sshCommand"]
)
async def test_publish_refuses_a_work_tree_that_redirects_its_push(
    local: Workspaces, origin: Path, tmp_path: Path, how: str
) -> None:
    made = await env.run(local.clone, clone_in(origin))
    path = Path(made.path)
    key, value = {
        "insteadOf": (f"url.{tmp_path}/elsewhere.git.insteadOf", str(origin)),
        "proxy": ("http.proxy", "http://127.0.0.1:9"),
        "extraHeader": ("http.extraHeader", "X-Leak: 1"),
        "sshCommand": ("core.sshCommand", "sh -c 'cat > /tmp/x'"),
    }.get(how, ("include.path", str(tmp_path / "more.gitconfig")))
    if how == "included insteadOf":
        # An included file: `git config --local` alone does not read it, git's push does.
        (tmp_path / "more.gitconfig").write_text(
            f'[url "{tmp_path}/elsewhere.git"]\n\tinsteadOf = {origin}\n'
        )
    run_git(path, "config", key, value)
    (path / "x.txt").write_text("x\n")
    publish = PublishIn(owner_id="task-a", repo_url=str(origin), branch=made.branch, message="m")
    error = await failure(env.run(local.publish, publish))
    assert error.type == "WorkspaceError" and branch_of(origin, made.branch) is None


# --- what changed, checkout, patches, scratch, deletion ------------------------------------------


async def test_summary_counts_committed_staged_and_untracked_changes(
    local: Workspaces, origin: Path
) -> None:
    made = await env.run(local.clone, clone_in(origin))
    path = Path(made.path)
    (path / "committed.txt").write_text("a\nb\nc\n")
    run_git(path, "add", "committed.txt")
    run_git(path, "commit", "--quiet", "-m", "three lines")
    (path / "app.py").write_text("print('changed')\n")  # one line for one
    (path / "untracked.txt").write_text("x\ny\n")
    (path / "README.md").unlink()  # one line gone
    before = run_git(path, "status", "--porcelain")
    counted = await summary(path, made.base_commit)
    assert counted.model_dump() == {"files_changed": 4, "insertions": 6, "deletions": 2}
    assert run_git(path, "status", "--porcelain") == before  # its index untouched


async def test_checkout_and_a_patch(local: Workspaces) -> None:
    made = await env.run(local.scratch, ScratchIn(owner_id="debug-1"))
    path = Path(made.path)
    (path / "f.txt").write_text("one\n")
    run_git(path, "add", "f.txt")
    run_git(path, "commit", "--quiet", "-m", "one")
    (path / "f.txt").write_text("two\n")
    patch = run_git(path, "diff")
    run_git(path, "checkout", "--quiet", "--", "f.txt")
    await checkout(path, made.base_commit)
    assert not (path / "f.txt").exists()
    await checkout(path, "main")
    await apply_patch(path, patch)
    assert (path / "f.txt").read_text() == "two\n"
    error = await failure(apply_patch(path, patch))  # applied already: it no longer applies
    assert error.type == "WorkspaceError" and (path / "f.txt").read_text() == "two\n"
    assert (await failure(checkout(path, "no-such-commit"))).type == "WorkspaceError"


async def test_scratch_is_a_repository_with_one_empty_commit_and_is_reused(
    local: Workspaces,
) -> None:
    made = await env.run(local.scratch, ScratchIn(owner_id="session-1"))
    path = Path(made.path)
    assert (made.branch, made.base_branch, made.reused) == ("main", "main", False)
    assert run_git(path, "rev-list", "--count", "HEAD").strip() == "1"
    assert run_git(path, "ls-tree", "HEAD") == ""
    (path / "kept.txt").write_text("kept\n")
    again = await env.run(local.scratch, ScratchIn(owner_id="session-1"))
    assert again.reused and again.base_commit == made.base_commit and (path / "kept.txt").exists()


async def test_scratch_repositories_are_copies_of_one_made_once(
    local: Workspaces, argv_log: Path
) -> None:
    """A run with no directory or repository, and a scratch session, get their own empty
    repository: a copy of one kept aside, so only the first costs git processes."""
    one = Path((await env.run(local.prepare, WorkspaceIn(resource_id="run-1"))).path)
    made_by_git = argv_log.read_text()
    assert "init" in made_by_git and "commit" in made_by_git
    two = Path((await env.run(local.prepare, WorkspaceIn(resource_id="run-2"))).path)
    three = Path((await env.run(local.scratch, ScratchIn(owner_id="session-1"))).path)
    assert "init" not in argv_log.read_text()[len(made_by_git) :]
    for path in (one, two, three):
        assert run_git(path, "symbolic-ref", "--short", "HEAD").strip() == "main"
        assert run_git(path, "log", "--format=%s").strip() == "pilothouse: start"
    (one / "f.txt").write_text("mine\n")
    run_git(one, "add", "f.txt")
    run_git(one, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one's own")
    assert run_git(two, "rev-list", "--count", "HEAD").strip() == "1"
    assert not (two / "f.txt").exists()
    again = await env.run(local.prepare, WorkspaceIn(resource_id="run-1"))
    assert again.path == str(one) and (one / "f.txt").exists()  # a retry finds it as left


async def test_workspaces_are_listed_and_deleted(local: Workspaces, origin: Path) -> None:
    await env.run(local.clone, clone_in(origin, "task-a"))
    await env.run(local.scratch, ScratchIn(owner_id="session-1"))
    listed = {w.owner_id: w for w in list_workspaces(local.settings)}
    assert set(listed) == {"task-a", "session-1"}
    assert listed["task-a"].branch == "pilothouse/task-a" and listed["session-1"].branch == "main"
    assert all(w.size_bytes > 0 for w in listed.values())
    assert await env.run(local.delete, WorkspaceRef(owner_id="task-a"))
    assert not (local.settings.workspaces_dir / "task-a").exists()
    assert not await env.run(local.delete, WorkspaceRef(owner_id="task-a"))
    assert [w.owner_id for w in list_workspaces(local.settings)] == ["session-1"]
