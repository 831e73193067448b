"""A fault-injecting HTTP proxy in front of a loopback S3 server, for reliability tests.

Clients use the proxy's address as their S3 endpoint. Requests are forwarded byte for byte (method, raw
path and query, every header including ``Host``, the body as received, chunked or not), so SigV4
signatures, which the client computed for the proxy's host, still verify at the server: rclone checks
the signature against the ``Host`` header it receives, not against its own listen address.

Per request the proxy either forwards, or injects one fault:

  ``slowdown``    answer 503 with an S3 ``SlowDown`` XML error (what S3 says when throttling)
  ``internal``    answer 500 with an S3 ``InternalError`` XML error
  ``reset``       close the connection (TCP reset) without answering
  ``reset_mid``   forward, then send the status line, headers and half the body, and reset
  ``slow``        wait ``slow_s`` seconds, then forward normally

Modes: :meth:`S3FaultProxy.clean` (forward everything), :meth:`S3FaultProxy.flaky` (a seeded random
fraction of requests fail) and :meth:`S3FaultProxy.outage` (every request gets 503 SlowDown). In flaky
mode the draw for a request depends only on the seed, the method, the path and how many times that
method and path were seen before, not on the order in which concurrent clients' requests arrive, so a
run that makes the same requests meets the same faults. :meth:`S3FaultProxy.outage_when` arms an outage
to begin at the first request matching a predicate (a precise point of a job);
:meth:`S3FaultProxy.fail_next` fails exactly the next n requests. :attr:`S3FaultProxy.stats` counts
requests and injected faults.

Everything stays on 127.0.0.1; memory per request is bounded by the request body and, for ``reset_mid``
only, the response body (S3 test objects are small).
"""

from __future__ import annotations

import http.client
import random
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("slowdown", "internal", "reset", "reset_mid", "slow")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization"}
STREAM_CHUNK = 64 * 1024

RequestMatcher = Callable[[str, str], bool]   # (method, percent-decoded path with query) -> match


@dataclass
class ProxyStats:
    """What the proxy saw and did; a snapshot is a copy, safe to compare later."""

    requests: int = 0
    forwarded: int = 0
    by_method: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)              # by fault kind
    faults_by_method: Counter = field(default_factory=Counter)
    abandoned: int = 0          # slow answers whose client had given up (closed the connection) meanwhile
    upstream_errors: int = 0    # requests the S3 server could not be reached for (answered 502)

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def copy(self) -> "ProxyStats":
        return ProxyStats(self.requests, self.forwarded, Counter(self.by_method), Counter(self.faults),
                          Counter(self.faults_by_method), self.abandoned, self.upstream_errors)

    def __str__(self) -> str:
        def show(counts: Counter) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"

        return (f"{self.requests} requests ({show(self.by_method)}), {self.forwarded} forwarded, "
                f"{self.injected} faults injected ({show(self.faults)}; by method {show(self.faults_by_method)}), "
                f"{self.abandoned} slow answers abandoned by the client, {self.upstream_errors} upstream errors")


def s3_error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, proxy: "S3FaultProxy") -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], OSError):   # a client that gave up on a slow answer: not news
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, as S3 clients expect
    timeout = 60                      # idle keep-alive connections are dropped after this
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    # Every method is handled the same way.
    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    do_PUT = do_HEAD = do_DELETE = do_POST = do_PATCH = do_OPTIONS = do_GET  # noqa: N815

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        if self._upstream is not None:
            self._upstream.close()
        self.server.proxy._track(self.connection, add=False)

    # --- one request ----------------------------------------------------------------------------
    def _serve(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        fault = proxy._decide(self.command, self.path)
        if fault == "slowdown":
            self._answer_error(503, "SlowDown", "Please reduce your request rate.")
        elif fault == "internal":
            self._answer_error(500, "InternalError", "We encountered an internal error. Please try again.")
        elif fault == "reset":
            self._reset()
        else:
            if fault == "slow":
                time.sleep(proxy.slow_s)
                if self._client_gone():
                    with proxy._lock:
                        proxy._stats.abandoned += 1
                    self.close_connection = True
                    return
            self._forward(body, cut_mid_response=(fault == "reset_mid"))

    def _client_gone(self) -> bool:
        """Whether the client closed the connection (e.g. it timed out waiting for a slow answer)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _read_body(self) -> bytes | None:
        """The request body exactly as sent (chunked framing kept), or None if the client went away."""
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                raw = bytearray()
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        return None
                    raw += line
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        while True:          # trailers, up to the empty line
                            trailer = self.rfile.readline(65537)
                            if not trailer:
                                return None
                            raw += trailer
                            if trailer in (b"\r\n", b"\n"):
                                return bytes(raw)
                    chunk = self.rfile.read(size + 2)   # data + CRLF
                    if len(chunk) < size + 2:
                        return None
                    raw += chunk
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            return data if len(data) == length else None
        except (OSError, ValueError):
            return None

    def _answer_error(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = s3_error_body(code, message, urlsplit(self.path).path, request_id)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection with a TCP reset (SO_LINGER 0), as a crashed or overloaded front end does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The socket closes (and resets) only once the buffered reader on it is closed too; the writer
        # holds no reference (it writes to the socket directly) and must stay open for the handler's flush.
        try:
            self.rfile.close()
        except OSError:
            pass
        self.connection.close()

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        # A fresh upstream connection per request (cheap on loopback): a reused one that the server has
        # meanwhile closed would force a resend, and a resent PUT or CompleteMultipartUpload is not the
        # same request twice.
        if self._upstream is not None:
            self._upstream.close()
        host, port = self.server.proxy.upstream
        self._upstream = conn = http.client.HTTPConnection(host, port, timeout=self.server.proxy.upstream_timeout_s)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        return conn.getresponse()

    def _forward(self, body: bytes, cut_mid_response: bool) -> None:
        proxy = self.server.proxy
        try:
            resp = self._send_upstream(body)
        except (OSError, http.client.HTTPException):
            with proxy._lock:
                proxy._stats.upstream_errors += 1
            self._answer_error(502, "InternalError", "proxy could not reach the S3 server")
            return
        with proxy._lock:
            proxy._stats.forwarded += 1
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        has_length = any(k.lower() == "content-length" for k, _ in headers)
        if not no_body and not chunked and not has_length:
            # Body delimited by the server closing: buffer it and state its length.
            data = resp.read()
            headers.append(("Content-Length", str(len(data))))
            pieces: Iterator[bytes] = iter([data])
        else:
            pieces = iter(()) if no_body else _read_pieces(resp)
        head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode("latin-1")
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"
        if cut_mid_response:
            data = b"".join(pieces)
            if data:
                framed = (b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n") if chunked else data
                self.wfile.write(head + framed[: max(1, len(framed) // 2)])
            else:
                self.wfile.write(head[: max(1, len(head) // 2)])
            self._reset()
            return
        self.wfile.write(head)
        for piece in pieces:
            self.wfile.write((b"%x\r\n" % len(piece) + piece + b"\r\n") if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


def _read_pieces(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        piece = resp.read(STREAM_CHUNK)
        if not piece:
            resp.close()
            return
        yield piece


class S3FaultProxy:
    """Forward S3 requests from ``127.0.0.1:<port>`` to ``upstream_url``, injecting faults per the mode.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Thread-safe: modes may be switched
    while requests are in flight (a request's fault is decided when its body has arrived).
    """

    def __init__(self, upstream_url: str, *, seed: int = 0, slow_s: float = 0.5,
                 upstream_timeout_s: float = 60.0) -> None:
        parts = urlsplit(upstream_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream_url}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.seed = seed
        self.slow_s = slow_s
        self.upstream_timeout_s = upstream_timeout_s
        self._lock = threading.Lock()
        self._stats = ProxyStats()
        self._mode = "clean"
        self._rate = 0.0
        self._rate_by_method: dict[str, float] = {}
        self._kinds: tuple[str, ...] = FAULT_KINDS
        self._seen: Counter = Counter()            # (method, path) -> requests so far, for the flaky draw
        self._trigger: RequestMatcher | None = None
        self.outage_since: float | None = None      # time.monotonic() when the current outage began
        self._fail_next: list[str] = []             # faults for the next requests, before the mode applies
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "S3FaultProxy":
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "S3FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- modes ------------------------------------------------------------------------------------
    def clean(self) -> None:
        """Forward every request unchanged."""
        with self._lock:
            self._mode, self._trigger, self.outage_since = "clean", None, None

    def flaky(self, rate: float = 0.05, kinds: tuple[str, ...] = FAULT_KINDS, seed: int | None = None,
              rate_by_method: dict[str, float] | None = None) -> None:
        """Inject a fault, of a kind drawn from ``kinds``, into a ``rate`` fraction of requests (seeded).

        ``rate_by_method`` overrides the rate for some methods, e.g. ``{"PUT": 0.3}`` where a job makes few
        writes among many reads and a test needs some of them to fail.
        """
        rates = dict(rate_by_method or {})
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds or not all(0.0 <= r <= 1.0 for r in (rate, *rates.values())):
            raise ValueError(f"flaky: rates must be in [0, 1] and kinds among {FAULT_KINDS}, got {rate}, {rates}, "
                             f"{kinds}")
        with self._lock:
            self._mode, self._rate, self._kinds, self._trigger = "flaky", rate, tuple(kinds), None
            self.outage_since = None
            self._rate_by_method = {m.upper(): r for m, r in rates.items()}
            if seed is not None:
                self.seed = seed
            self._seen.clear()

    def outage(self) -> None:
        """Every request is answered 503 SlowDown until the mode changes."""
        with self._lock:
            self._mode, self._trigger, self.outage_since = "outage", None, time.monotonic()

    def fail_next(self, n: int, kind: str = "slowdown") -> None:
        """The next ``n`` requests get fault ``kind``; then the mode applies again (a short, exact outage)."""
        if kind not in FAULT_KINDS or n < 0:
            raise ValueError(f"fail_next: n >= 0 and kind among {FAULT_KINDS}, got {n}, {kind!r}")
        with self._lock:
            self._fail_next = [kind] * n

    def outage_when(self, matches: RequestMatcher) -> None:
        """Forward requests as now until one matches ``matches(method, path)``; from that one on, an outage.

        ``path`` is percent-decoded (clients encode ``=`` in ``model=...`` as ``%3D``) and keeps the query.
        """
        with self._lock:
            self._trigger = matches

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._stats.copy()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    # --- internals --------------------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self._stats.requests += 1
            self._stats.by_method[method] += 1
            if self._trigger is not None and self._trigger(method, unquote(path)):
                self._mode, self._trigger, self.outage_since = "outage", None, time.monotonic()
            fault: str | None = None
            if self._fail_next:
                fault = self._fail_next.pop()
            elif self._mode == "outage":
                fault = "slowdown"
            elif self._mode == "flaky":
                nth = self._seen[(method, path)]
                self._seen[(method, path)] += 1
                # str seeds are hashed with SHA-512: the same draw in every process, whatever PYTHONHASHSEED.
                draw = random.Random(f"{self.seed}|{method}|{path}|{nth}")
                if draw.random() < self._rate_by_method.get(method, self._rate):
                    fault = draw.choice(self._kinds)
            if fault is not None:
                self._stats.faults[fault] += 1
                self._stats.faults_by_method[method] += 1
            return fault

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)
