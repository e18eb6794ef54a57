"""Secrets at rest: registered keys and task credentials are kept encrypted (Fernet).

The key is `PILOTHOUSE_SECRET_KEY`, or a key generated into the data directory on first
start (mode 0600). Lose it and what it encrypted cannot be read again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from settings import Settings

KEY_FILE = "secret.key"


class SecretUnreadable(Exception):
    """A stored secret that the current key cannot decrypt."""


class Secrets:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def of(cls, settings: Settings) -> Secrets:
        if settings.secret_key is not None:
            return cls(settings.secret_key.get_secret_value().encode())
        return cls(_key_file(settings.data_dir.resolve() / KEY_FILE))

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, stored: str) -> str:
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored secret does not decrypt with this key") from None


def _key_file(path: Path) -> bytes:
    """The data directory's key, made on first use. `O_EXCL` so two processes starting at
    once agree on one key: the loser reads the winner's."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _written(path)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def _written(path: Path) -> bytes:
    """The key another process has just created, once it has been written."""
    for _ in range(100):
        key = path.read_bytes().strip()
        if key:
            return key
        time.sleep(0.01)
    raise SecretUnreadable(f"{path} stays empty")
