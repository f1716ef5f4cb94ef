"""A loopback HTTP proxy that puts S3's failure modes in front of a real S3 server (moto, in the tests).

Point boto3 at it with ``AWS_ENDPOINT_URL``. At a seeded rate, instead of a clean forward, a request gets
one of (in turn, so that every kind occurs):

- ``503``: ``503 SlowDown`` (the XML error S3 sends when throttling), not forwarded;
- ``500``: ``500 InternalError``, not forwarded;
- ``drop``: the connection closed without a response, before the request reaches the server;
- ``cut``: forwarded (the server acts on it), then the response is cut: the status line and headers
  with the full Content-Length, half of the body, and the connection closed (no response at all when
  the body is empty, as for a PUT or a HEAD).

``counts`` records every kind injected and the requests seen; ``seen`` every request as (method,
path). Optionally ``corrupt_puts`` requests
that upload data get one body byte flipped on the way, with their ``x-amz-checksum-sha256`` header
recomputed to match, so the server stores different bytes under a consistent checksum (what an upload
checker must catch by comparing with the local file).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

KINDS = ("503", "500", "drop", "cut")
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


class FaultyProxy:
    """``with FaultyProxy(upstream, rate=0.1, seed=0) as proxy:`` ... ``proxy.url``, ``proxy.counts``."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.1,
        seed: int = 0,
        corrupt_puts: int = 0,
        kinds: tuple[str, ...] = KINDS,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.kinds = kinds
        self.corrupt_puts = corrupt_puts
        self.counts: Counter[str] = Counter()
        self.seen: list[tuple[str, str]] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def injected(self) -> int:
        return sum(self.counts[k] for k in KINDS)

    def _decide(self, method: str, has_body: bool) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if has_body and method == "PUT" and self.counts["corrupted"] < self.corrupt_puts:
                self.counts["corrupted"] += 1
                return "corrupt"
            if self._random.random() >= self.rate:
                return None
            kind = self.kinds[self.injected % len(self.kinds)]
            self.counts[kind] += 1
            return kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _close(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.seen.append((self.command, self.path))
                kind = proxy._decide(self.command, bool(body))
                if kind == "drop":
                    self._close()
                    return
                if kind in _ERRORS:
                    status, code, message = _ERRORS[kind]
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                        f"<Message>{message}</Message><RequestId>proxy</RequestId></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if kind == "corrupt":
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                    for name in list(headers):
                        if name.lower() == "x-amz-checksum-sha256":
                            headers[name] = base64.b64encode(hashlib.sha256(body).digest()).decode()
                        if name.lower() in ("content-md5",):
                            del headers[name]
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    reply = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                finally:
                    upstream.close()
                if kind == "cut" and (self.command == "HEAD" or not data):
                    self._close()  # the server acted on the request; its response is lost
                    return
                self.send_response(response.status, response.reason)
                for k, v in reply:
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k, _ in reply):
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if kind == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._close()
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
