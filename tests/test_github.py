"""Opening a pull request against a GitHub REST API on loopback: what is sent, an already
open one found again, GitHub's failures retried and its refusals not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.github import GitHub, PullRequest, PullRequestIn, owner_and_repo
from settings import Settings
from store.credentials import CredentialRef
from store.engine import Database
from store.models import Key
from store.secrets import Secrets
from tests.conftest import free_port
from tests.git_servers import FakeGitHub, fake_github

TOKEN = "ghp_prTokenValue1234567890abcdef"
env = ActivityEnvironment()


@pytest.fixture
def github_api() -> Iterator[FakeGitHub]:
    with fake_github() as server:
        yield server


@pytest.fixture
async def github(tmp_path: Path, github_api: FakeGitHub) -> AsyncIterator[GitHub]:
    """No database in use: these pull requests carry no credential."""
    settings = Settings(data_dir=tmp_path, github_api_url=github_api.base_url, _env_file=None)
    db = Database(settings.db_url)
    yield GitHub(db, settings)
    await db.dispose()


def pull(head: str = "pilothouse/task-1", **extra: object) -> PullRequestIn:
    fields: dict[str, object] = {
        "repo_url": "https://github.com/octo/widgets.git",
        "head": head,
        "base": "main",
        "title": "Fix the widgets",
        "body": "What the agent did",
    }
    return PullRequestIn.model_validate({**fields, **extra})


async def failure(github: GitHub, p: PullRequestIn) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await env.run(github.open_pull_request, p)
    return raised.value


async def keyed(settings: Settings, db: Database, github_api: FakeGitHub) -> GitHub:
    """GitHub against the fake, with the token registered as the key `gh`."""
    async with db.session() as session:
        token = Secrets.of(settings).encrypt(TOKEN)
        session.add(Key(name="gh", provider="github", token=token, created_by="test"))
        await session.commit()
    return GitHub(db, settings.model_copy(update={"github_api_url": github_api.base_url}))


async def test_a_pull_request_is_opened_with_the_token_in_a_header_only(
    settings: Settings, db: Database, github_api: FakeGitHub
) -> None:
    github = await keyed(settings, db, github_api)
    opened = await env.run(
        github.open_pull_request, pull(credential=CredentialRef(kind="key", id="gh"))
    )
    assert opened == PullRequest(pr_url="https://github.com/octo/widgets/pull/1", pr_number=1)
    [seen] = github_api.seen
    assert (seen.method, seen.path) == ("POST", "/repos/octo/widgets/pulls")
    assert seen.authorization == f"Bearer {TOKEN}"
    assert seen.headers["accept"] == "application/vnd.github+json"
    assert seen.headers["x-github-api-version"] == "2022-11-28"
    assert seen.body == {
        "title": "Fix the widgets",
        "body": "What the agent did",
        "head": "pilothouse/task-1",
        "base": "main",
    }


async def test_an_open_pull_request_for_the_branch_is_found_and_returned(
    github: GitHub, github_api: FakeGitHub
) -> None:
    first = await env.run(github.open_pull_request, pull())
    other = await env.run(github.open_pull_request, pull("pilothouse/task-2"))
    again = await env.run(github.open_pull_request, pull())
    assert again == first != other
    assert len(github_api.pulls) == 2
    lookup = github_api.seen[-1]
    assert lookup.method == "GET" and lookup.path == "/repos/octo/widgets/pulls"
    assert "head=octo%3Apilothouse%2Ftask-1" in lookup.query and "state=open" in lookup.query


async def test_a_server_error_is_retryable_and_the_retry_opens_it(
    github: GitHub, github_api: FakeGitHub
) -> None:
    github_api.answers.append((500, {"message": "Server Error"}))
    error = await failure(github, pull())
    assert error.type == "GitHubUnavailable" and not error.non_retryable
    assert "500" in error.message
    opened = await env.run(github.open_pull_request, pull())
    assert opened.pr_number == 1 and len(github_api.pulls) == 1


async def test_a_rate_limit_is_retryable(github: GitHub, github_api: FakeGitHub) -> None:
    github_api.answers.append((429, {"message": "API rate limit exceeded"}))
    error = await failure(github, pull())
    assert error.type == "GitHubUnavailable" and not error.non_retryable


async def test_a_refusal_is_final_and_says_why(github: GitHub, github_api: FakeGitHub) -> None:
    github_api.answers.append((404, {"message": "Not Found"}))
    error = await failure(github, pull())
    assert error.type == "PullRequestRefused" and error.non_retryable
    assert "Not Found" in error.message and "404" in error.message


async def test_what_github_says_back_never_carries_the_token(
    settings: Settings, db: Database, github_api: FakeGitHub
) -> None:
    github = await keyed(settings, db, github_api)
    echoed = {"message": "Validation Failed", "errors": [{"message": f"bad token {TOKEN}"}]}
    github_api.answers.append((422, echoed))
    error = await failure(github, pull(credential=CredentialRef(kind="key", id="gh")))
    assert error.type == "PullRequestRefused" and "bad token ***" in error.message
    assert TOKEN not in error.message


async def test_an_unreachable_api_is_retryable(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, github_api_url=f"http://127.0.0.1:{free_port()}", _env_file=None
    )
    db = Database(settings.db_url)
    try:
        error = await failure(GitHub(db, settings), pull())
    finally:
        await db.dispose()
    assert error.type == "GitHubUnavailable" and not error.non_retryable


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/octo/widgets.git", ("octo", "widgets")),
        ("https://github.com/octo/widgets", ("octo", "widgets")),
        ("https://github.com/octo/widgets/", ("octo", "widgets")),
        ("git@github.com:octo/widgets.git", ("octo", "widgets")),
        ("ssh://git@github.com/octo/widgets.git", ("octo", "widgets")),
        ("file:///srv/git/octo/widgets.git", ("octo", "widgets")),
        ("/tmp/remotes/origin.git", ("remotes", "origin")),
    ],
)
def test_owner_and_repository_from_a_url(url: str, expected: tuple[str, str]) -> None:
    assert owner_and_repo(url) == expected


def test_a_url_without_owner_and_repository_is_refused() -> None:
    with pytest.raises(ApplicationError) as raised:
        owner_and_repo("https://github.com/")
    assert raised.value.type == "PullRequestRefused"
