"""A webhook receiver on loopback: a real HTTP server that records each request it gets.

It checks each signature with the seed's own verify snippet, and can be told to answer
with an error status a number of times, or to hang without answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(body: bytes, signature: str, secret: str) -> bool:
    """The seed's snippet (003, "Verifying Webhook Signatures"), as a receiver writes it."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    signature_valid: bool | None  # None: the receiver has no secret to check with


@dataclass
class Receiver:
    url: str
    secret: str | None = None
    requests: list[Received] = field(default_factory=list)
    failures: int = 0  # answer `fail_status` to this many requests, then 200
    fail_status: int = 500
    hanging: bool = False  # take the request, never answer (until closed)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, times: int, status: int = 500) -> None:
        with self.lock:
            self.failures, self.fail_status = times, status

    def hang(self) -> None:
        self.hanging = True

    async def wait_for(self, count: int, seconds: float = 10) -> list[Received]:
        """The requests once `count` have arrived, polling until a deadline."""
        deadline = time.monotonic() + seconds
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests came"
            await asyncio.sleep(0.01)
        return list(self.requests)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            signature = self.headers.get("X-Signature-256")
            valid = None
            if receiver.secret is not None:
                valid = signature is not None and verify(body, signature, receiver.secret)
            with receiver.lock:
                receiver.requests.append(
                    Received(
                        self.command,
                        self.path,
                        dict(self.headers.items()),
                        body,
                        time.monotonic(),
                        valid,
                    )
                )
                status = 200
                if receiver.failures > 0:
                    receiver.failures -= 1
                    status = receiver.fail_status
            if receiver.hanging:
                receiver.released.wait()
                return
            answer = b'{"ok":true}' if status < 300 else b'{"error":"nope"}'
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test reads `requests`, not a log

    return Handler


@contextmanager
def receiving(secret: str | None = None) -> Iterator[Receiver]:
    """A receiver serving on a free loopback port until the block ends."""
    receiver = Receiver(url="", secret=secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.shutdown()
        server.server_close()
        thread.join()
