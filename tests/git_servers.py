"""Outside peers of workspaces, real and on loopback: an origin repository, a smart-HTTP
git server that wants a token (`git http-backend` as CGI behind HTTP Basic auth), and a
GitHub REST API that opens pull requests. Each records what it was asked."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

GIT = ("git", "-c", "user.name=Origin", "-c", "user.email=origin@localhost")


def run_git(cwd: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def make_origin(root: Path, name: str = "origin.git") -> Path:
    """A bare repository with `main` (two commits, the default) and `develop` (one more)."""
    work = root / f"{name}.work"
    work.mkdir(parents=True)
    run_git(work, "init", "--quiet", "--initial-branch=main")
    (work / "README.md").write_text("hello\n")
    run_git(work, "add", "README.md")
    run_git(work, "commit", "--quiet", "-m", "first")
    (work / "app.py").write_text("print('one')\n")
    run_git(work, "add", "app.py")
    run_git(work, "commit", "--quiet", "-m", "second")
    run_git(work, "checkout", "--quiet", "-b", "develop")
    (work / "develop.txt").write_text("only on develop\n")
    run_git(work, "add", "develop.txt")
    run_git(work, "commit", "--quiet", "-m", "third, on develop")
    run_git(work, "checkout", "--quiet", "main")
    origin = root / name
    run_git(root, "clone", "--quiet", "--bare", str(work), str(origin))
    return origin


def commit_to(origin: Path, branch: str, filename: str, text: str) -> str:
    """Adds a commit to `branch` of a bare origin, as someone else pushing would; its id."""
    work = origin.with_name(origin.name + f".push-{branch.replace('/', '-')}")
    if not work.exists():
        run_git(origin.parent, "clone", "--quiet", "--branch", branch, str(origin), str(work))
    run_git(work, "pull", "--quiet", "--ff-only")
    (work / filename).write_text(text)
    run_git(work, "add", filename)
    run_git(work, "commit", "--quiet", "-m", f"add {filename}")
    run_git(work, "push", "--quiet", "origin", branch)
    return run_git(work, "rev-parse", "HEAD").strip()


def branch_of(origin: Path, branch: str) -> str | None:
    try:
        return run_git(origin, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").strip()
    except subprocess.CalledProcessError:
        return None


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names in lower case
    body: Any = None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler], owner: Any) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.owner = owner  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --- smart HTTP git, behind a token -----------------------------------------------------


@dataclass
class GitHttp:
    """Serves the bare repositories under `root` at /<name>; Basic auth with `token` as
    the password (any user name), as GitHub takes a token."""

    root: Path
    token: str
    seen: list[Seen] = field(default_factory=list)
    base_url: str = ""

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


class _GitHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        owner: GitHttp = self.server.owner  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        authorization = self.headers.get("Authorization")
        owner.seen.append(
            Seen(
                self.command,
                parts.path,
                parts.query,
                {k.lower(): v for k, v in self.headers.items()},
            )
        )
        user = _basic_user(authorization, owner.token)
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._body()
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": parts.path,
            "REQUEST_METHOD": self.command,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _basic_user(authorization: str | None, token: str) -> str | None:
    if not authorization or not authorization.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
    return user if password == token else None


@contextlib.contextmanager
def git_http(root: Path, token: str) -> Iterator[GitHttp]:
    """Serves every bare repository under `root`, pushes included."""
    for repo in root.glob("*.git"):
        run_git(repo, "config", "http.receivepack", "true")
    server = GitHttp(root, token)
    with _serve(_GitHandler, server) as base_url:
        server.base_url = base_url
        yield server


# --- the GitHub REST API ------------------------------------------------------------------


@dataclass
class FakeGitHub:
    """Opens pull requests like GitHub: 201 with a number, 422 when one is open already
    for the same head. `answers` are given, in order, before any of that."""

    seen: list[Seen] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    base_url: str = ""


class _GitHubHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: Any = None) -> tuple[FakeGitHub, list[str], dict[str, list[str]]]:
        owner: FakeGitHub = self.server.owner  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        owner.seen.append(
            Seen(
                self.command,
                parts.path,
                parts.query,
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
        )
        return owner, parts.path.strip("/").split("/"), parse_qs(parts.query)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        owner, path, _ = self._record(body)
        if owner.answers:
            self._answer(*owner.answers.pop(0))
            return
        if len(path) != 4 or path[0] != "repos" or path[3] != "pulls":
            self._answer(404, {"message": "Not Found"})
            return
        repo = f"{path[1]}/{path[2]}"
        head = f"{path[1]}:{body['head']}"
        if any(p["repo"] == repo and p["head"] == head for p in owner.pulls):
            message = f"A pull request already exists for {head}."
            self._answer(
                422,
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "code": "custom", "message": message}],
                },
            )
            return
        number = len(owner.pulls) + 1
        pull = {
            "repo": repo,
            "head": head,
            "base": body["base"],
            "number": number,
            "html_url": f"https://github.com/{repo}/pull/{number}",
        }
        owner.pulls.append(pull)
        self._answer(201, {"number": number, "html_url": pull["html_url"], "state": "open"})

    def do_GET(self) -> None:
        owner, path, query = self._record()
        repo = "/".join(path[1:3])
        heads = query.get("head", [])
        found = [
            {"number": p["number"], "html_url": p["html_url"], "state": "open"}
            for p in owner.pulls
            if p["repo"] == repo and (not heads or p["head"] in heads)
        ]
        self._answer(200, found)


@contextlib.contextmanager
def fake_github() -> Iterator[FakeGitHub]:
    server = FakeGitHub()
    with _serve(_GitHubHandler, server) as base_url:
        server.base_url = base_url
        yield server
