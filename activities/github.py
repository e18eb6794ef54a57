"""GitHub: opening a task's pull request through the REST API (`settings.github_api_url`).

Safe to retry: when GitHub says a pull request is open already for the branch (as after an
attempt that opened one and died before it answered), that one is looked up and returned.
GitHub's refusals (4xx) end the attempt for good with GitHub's own words; its failures (5xx,
rate limits, the network) are retried. The token is sent in a header and in nothing else:
what GitHub or httpx says passes through `redact` before it reaches an error.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from settings import Settings
from store import credentials
from store.credentials import CredentialRef
from store.engine import Database
from store.secrets import Secrets

TIMEOUT_S = 30
_SCP = re.compile(r"^[\w.-]+@[\w.-]+:(?P<path>.+)$")


class PullRequestIn(BaseModel):
    repo_url: str
    credential: CredentialRef | None = None
    head: str
    base: str
    title: str
    body: str


class PullRequest(BaseModel):
    pr_url: str
    pr_number: int


def owner_and_repo(repo_url: str) -> tuple[str, str]:
    """`o`, `r` of https://github.com/o/r(.git), git@github.com:o/r.git, ssh:// URLs, and of
    local paths and file:// URLs (the last two components), as tests use."""
    url = repo_url.strip()
    scp = _SCP.match(url)
    path = scp.group("path") if scp and "://" not in url else re.sub(r"^[a-z+]+://[^/]*", "", url)
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        raise ApplicationError(
            f"cannot tell the owner and repository of {credentials.redact(url)}",
            type="PullRequestRefused",
            non_retryable=True,
        )
    return parts[-2], parts[-1].removesuffix(".git")


def _said(response: httpx.Response) -> str:
    """GitHub's message and the messages of its `errors`, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(body, dict):
        return str(body)[:300]
    said = [str(body.get("message", ""))]
    for error in body.get("errors") or []:
        said.append(str(error.get("message") or error.get("code") or error))
    return "; ".join(s for s in said if s)[:1000]


def _retry_after(response: httpx.Response) -> timedelta | None:
    value = response.headers.get("Retry-After")
    return timedelta(seconds=int(value)) if value and value.isdigit() else None


class GitHub:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._secrets: Secrets | None = None

    async def _token(self, ref: CredentialRef | None) -> str | None:
        if ref is None:
            return None
        if self._secrets is None:
            self._secrets = Secrets.of(self.settings)
        return await credentials.resolve(self.db, self._secrets, ref)

    @activity.defn(name="github.open_pull_request")
    async def open_pull_request(self, p: PullRequestIn) -> PullRequest:
        owner, repo = owner_and_repo(p.repo_url)
        token = await self._token(p.credential)
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "pilothouse",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        pulls = f"{self.settings.github_api_url.rstrip('/')}/repos/{owner}/{repo}/pulls"
        body = {"title": p.title, "body": p.body, "head": p.head, "base": p.base}
        async with httpx.AsyncClient(headers=headers, timeout=TIMEOUT_S) as http:
            try:
                response = await http.post(pulls, json=body)
                if response.status_code == 422 and "already exists" in _said(response):
                    head = p.head if ":" in p.head else f"{owner}:{p.head}"
                    response = await http.get(pulls, params={"head": head, "state": "open"})
                    found = _checked(response, token)
                    if isinstance(found, list) and found:
                        return _pull_request(found[0])
                    raise ApplicationError(
                        f"GitHub says a pull request exists for {head}, but lists none open",
                        type="PullRequestRefused",
                        non_retryable=True,
                    )
            except httpx.HTTPError as exc:
                said = credentials.redact(f"{type(exc).__name__}: {exc}", token)
                raise ApplicationError(
                    f"GitHub cannot be reached: {said}", type="GitHubUnavailable"
                ) from None
        return _pull_request(_checked(response, token))


def _checked(response: httpx.Response, token: str | None) -> Any:
    status = response.status_code
    if status < 300:
        return response.json()
    said = credentials.redact(_said(response), token)
    limited = status == 429 or (
        status == 403 and response.headers.get("X-RateLimit-Remaining") == "0"
    )
    if status >= 500 or limited:
        raise ApplicationError(
            f"GitHub answered {status}: {said}",
            type="GitHubUnavailable",
            next_retry_delay=_retry_after(response),
        )
    raise ApplicationError(
        f"GitHub refused the pull request ({status}): {said}",
        type="PullRequestRefused",
        non_retryable=True,
    )


def _pull_request(data: Any) -> PullRequest:
    return PullRequest(pr_url=str(data["html_url"]), pr_number=int(data["number"]))
