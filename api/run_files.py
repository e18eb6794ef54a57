"""A run's files on disk, read safely: listed, and opened by a path a client sends.

A run's directory is `artifacts_dir / run_id`: its step logs and patches. A client names a
file inside it by a relative path; nothing it sends may reach a file outside. The path is
URL-decoded twice (as the build system does, so `%252e%252e` is `..` too), then refused
whole if any part could climb, be absolute or mean something else on another OS; what is
left is resolved and must still be inside, and the file is opened without following a
final symlink, so one swapped in after the check cannot lead out either.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from pydantic import BaseModel, Field

from api.errors import ApiError
from settings import LIMITS

READ_CAP_BYTES = 1024 * 1024  # the build system's `artifact_read_size_cap_bytes`
MAX_LISTED = 10_000  # files in one listing: a listing stays one bounded answer
SCREENSHOTS = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
PAGES = {".html"}
_DRIVE = re.compile(r"^[A-Za-z]:")
# What `redact=true` hides: credentials that step logs tend to echo. Each match becomes
# `[REDACTED]` (for `key=value` forms, only the value).
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"\b(?:ph|sk|ghp|gho|ghs|github_pat|xox[abpr])[-_][A-Za-z0-9_-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"(?i)(bearer )[A-Za-z0-9._~+/=-]{16,}"),
    re.compile(
        r"(?i)((?:password|passwd|secret|token|api[_-]?key)[\"']?\s?[:=]\s?[\"']?)(?!\[REDACTED)[^\s\"',;]{4,}"
    ),
]


class ArtifactFile(BaseModel):
    path: str = Field(description="Relative to the run's directory, parts separated by `/`")
    size_bytes: int
    modified_at: str


class ArtifactIndex(BaseModel):
    run_id: str
    artifacts: list[ArtifactFile]
    total_size_bytes: int
    truncated: bool = Field(description=f"More than {MAX_LISTED} files: the list is cut")


class BrowserArtifact(ArtifactFile):
    type: Literal["screenshot", "html"]


class BrowserArtifacts(BaseModel):
    run_id: str
    artifacts: list[BrowserArtifact]
    total_count: int


@dataclass(frozen=True)
class FileText:
    text: str
    original_size: int
    truncated: bool


def run_dir(artifacts_dir: Path, run_id: str) -> Path | None:
    """The run's directory, or None when it is missing or is not a directory of its own
    right under the artifacts directory (a symlinked run directory is not followed)."""
    root = artifacts_dir.resolve()
    base = root / run_id
    if base.parent != root or base.is_symlink() or not base.is_dir():
        return None
    return base


def listing(base: Path | None) -> tuple[list[ArtifactFile], bool]:
    """Every regular file under `base`, in path order, and whether the list was cut.
    Symlinks are neither listed nor walked into: their targets may be anywhere."""
    if base is None:
        return [], False
    found: list[ArtifactFile] = []
    for folder, dirs, files in os.walk(base, followlinks=False):
        # Hidden entries are Pilothouse's own bookkeeping (`.<step>.pgid`), not artifacts.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                info = path.lstat()
            except OSError:
                continue  # removed while we walked
            if not stat.S_ISREG(info.st_mode):
                continue
            if len(found) == MAX_LISTED:
                return found, True
            found.append(
                ArtifactFile(
                    path=path.relative_to(base).as_posix(),
                    size_bytes=info.st_size,
                    modified_at=_iso(info.st_mtime),
                )
            )
    return found, False


def _iso(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


def _refuse(why: str) -> ApiError:
    return ApiError(400, "INVALID_ARTIFACT_PATH", f"query.path: {why}")


def safe_parts(raw: str) -> list[str]:
    """The parts of a client's relative path, or a 400 naming what is wrong with it."""
    path = unquote(unquote(raw))
    if not path:
        raise _refuse("empty")
    if len(path) > LIMITS.max_path_chars:
        raise _refuse(f"longer than {LIMITS.max_path_chars} characters")
    if "\x00" in path or any(ord(c) < 0x20 for c in path):
        raise _refuse("control characters and NUL bytes are not allowed")
    if "\\" in path:
        # On Windows `\` separates parts; a path that means different files on different
        # systems is refused rather than guessed at.
        raise _refuse("backslashes are not allowed; separate parts with /")
    if path.startswith("/"):
        raise _refuse("absolute paths are not allowed")
    if _DRIVE.match(path):
        raise _refuse("drive letters are not allowed")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _refuse(f"{part or 'an empty part'!r} is not allowed as a path part")
    return parts


def locate(base: Path | None, raw: str) -> Path:
    """The file `raw` names inside `base`: 400 if it could lead out, 404 if it is not there."""
    parts = safe_parts(raw)
    if base is None:
        raise ApiError(404, "ARTIFACT_NOT_FOUND", f"no file {raw!r}: the run has no files")
    try:
        target = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise _refuse("does not resolve to a file") from None
    if not target.is_relative_to(base):
        # A symlink inside the run's directory that points out of it.
        raise _refuse("leads outside the run's directory")
    if not target.is_file():
        raise ApiError(404, "ARTIFACT_NOT_FOUND", f"no file {raw!r} in the run's directory")
    return target


def redact(text: str) -> tuple[str, int]:
    count = 0
    for pattern in _SECRETS:
        # A pattern with a group keeps it (the `password=` of `password=…`).
        text, n = pattern.subn(r"\1[REDACTED]" if pattern.groups else "[REDACTED]", text)
        count += n
    return text, count


def read(base: Path | None, raw: str, cap: int = READ_CAP_BYTES) -> FileText:
    """The file `raw` names inside `base`, read safely (blocking: run it in a thread)."""
    return read_capped(locate(base, raw), cap)


def read_capped(path: Path, cap: int = READ_CAP_BYTES) -> FileText:
    """The file as text (bad UTF-8 replaced), cut at `cap` bytes with a marker at the end."""
    try:
        # O_NOFOLLOW: a symlink put in the file's place since `locate` is refused, not read.
        # O_NONBLOCK: a FIFO cannot hang the request; it fails the regular-file check.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise ApiError(
            404, "ARTIFACT_NOT_FOUND", "the file is gone or is not a plain file"
        ) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(404, "ARTIFACT_NOT_FOUND", "not a plain file")
        data = file.read(cap + 1)
    size = max(info.st_size, len(data))
    truncated = len(data) > cap
    text = data[:cap].decode("utf-8", errors="replace")
    if truncated:
        text += f"\n\n[TRUNCATED: File size {size} bytes exceeds cap of {cap} bytes]"
    return FileText(text=text, original_size=size, truncated=truncated)


def index(artifacts_dir: Path, run_id: str) -> ArtifactIndex:
    files, truncated = listing(run_dir(artifacts_dir, run_id))
    return ArtifactIndex(
        run_id=run_id,
        artifacts=files,
        total_size_bytes=sum(f.size_bytes for f in files),
        truncated=truncated,
    )


def browser(artifacts_dir: Path, run_id: str) -> BrowserArtifacts:
    found = []
    for f in listing(run_dir(artifacts_dir, run_id))[0]:
        suffix = Path(f.path).suffix.lower()
        if suffix in SCREENSHOTS or suffix in PAGES:
            kind: Literal["screenshot", "html"] = "screenshot" if suffix in SCREENSHOTS else "html"
            found.append(BrowserArtifact(**f.model_dump(), type=kind))
    return BrowserArtifacts(run_id=run_id, artifacts=found, total_count=len(found))
