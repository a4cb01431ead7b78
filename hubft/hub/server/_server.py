"""The socket side: a stdlib ``ThreadingHTTPServer`` that turns HTTP/1.1 connections into :class:`Request` objects.

HTTP/1.1 keep-alive matters: the client pools connections, so every response carries ``Content-Length`` (also on
``HEAD`` and errors) and an unread request body is drained before the next request on the same connection. The
server keeps track of open connections so that stopping it, or taking it down in "refuse" mode, also cuts pooled
connections instead of letting them talk to a stopped hub.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ._app import DROP, HubApp
from ._errors import ApiError, bad_request
from ._http import Body, Request, Response

_DRAIN_LIMIT = 16 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubft-local-hub"
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    # The headers and the body go out in separate writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK of the headers, 40 ms on Linux, on every keep-alive request.
    disable_nagle_algorithm = True
    server: HubHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, open_=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the app keeps a request log; stderr noise would drown test output

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Errors found by http.server itself (a malformed request line, an unknown method) get the hub's error
        # shape too, X-Error-Code included, instead of an HTML page.
        self.close_connection = True
        self._write(Response.error(ApiError(code, message or explain or "Bad request")))

    def _serve(self) -> None:
        try:
            body = Body(self.rfile, self._content_length())
        except ApiError as e:
            self.close_connection = True
            self._write(Response.error(e))
            return
        split = urlsplit(self.path)
        host = self.headers.get("host") or "{}:{}".format(*self.server.server_address[:2])
        request = Request(self.command, split.path, Request.parse_query(split.query), self.headers, body,
                          f"http://{host}", split.query)
        response = self.server.app.handle(request)
        if response is DROP:
            body.drain(_DRAIN_LIMIT)
            self.close_connection = True
            return
        if not body.drain(_DRAIN_LIMIT):
            self.close_connection = True
        self._write(response)

    def _content_length(self) -> int:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            raise ApiError(411, "Chunked request bodies are not supported: send Content-Length")
        raw = self.headers.get("content-length") or "0"
        if not raw.isdigit():
            raise bad_request(f"Invalid Content-Length {raw!r}")
        return int(raw)

    def _write(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(response.content_length))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is None:
                self.wfile.write(response.body)
            else:
                with open(response.file, "rb") as f:
                    f.seek(response.offset)
                    _copy(f, self.wfile, response.length)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve


def _copy(source: Any, target: Any, length: int) -> None:
    while length:
        chunk = source.read(min(1024 * 1024, length))
        if not chunk:
            raise OSError("blob shorter than its recorded size")
        target.write(chunk)
        length -= len(chunk)


class HubHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`HubApp`, one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: HubApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        """Remember or forget an open client connection."""
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Cut every open client connection (their handler threads then end)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

