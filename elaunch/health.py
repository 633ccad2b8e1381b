"""The HTTP endpoint (`--health-port`): /healthz, /readyz, /status and /metrics from the run's view.

Off by default; torchrun's `TORCHELASTIC_HEALTH_CHECK_PORT` turns it on too (torchrun's own
server is an empty stub in open source). It is served by a `ThreadingHTTPServer` in daemon
threads that only ever read the tracker's immutable `RunView` (one reference, swapped per event):
a request never takes a lock the agent holds, and the agent never waits for a request.

Liveness: the server is also a sink. The agent's `LocalProcesses.wait` flushes the bus whenever
it handles something, so `flush` is a heartbeat of the agent's loop. When the last beat is older
than BEAT_FRESH seconds, /healthz pokes the loop (`wake`, the same self-pipe a rendezvous
watcher uses) and answers 200 if a beat follows within LIVENESS_TIMEOUT seconds, else 503.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from elaunch import events as ev
from elaunch.errors import ConfigError, ElaunchError
from elaunch.runview import ViewSource
from elaunch.status import readiness, status_doc

BEAT_FRESH = 1.0
"""A heartbeat this recent (seconds) answers /healthz without waking the agent."""
LIVENESS_TIMEOUT = 5.0
"""Seconds the agent's loop has to answer a wake-up before /healthz says 503."""


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def check_endpoint(addr: str, port: int) -> None:
    """Raise ConfigError (a usage error) when `addr:port` cannot be listened on: an address that
    is not this host's, a name that does not resolve, a port in use or not allowed. Binds and
    closes a socket: the endpoint itself binds again when the run starts."""
    where = f"--health-addr {addr} --health-port {port}"
    if not addr:
        raise ConfigError("--health-addr: expected a local address, got nothing")
    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--health-addr {addr}: not an address of this host ({e.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"{where}: port {port} is in use") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--health-addr {addr}: not an address of this host") from None
            raise ConfigError(f"{where}: cannot listen there ({e.strerror or e})") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: str, port: int, app: HealthServer) -> None:
        self.address_family = _family(addr)
        self.app = app
        super().__init__((addr, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer: nothing to report on the job's console


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "elaunch"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            code, ctype, body = self.server.app.answer(path)
        except Exception as e:  # a bug here must not reach the job's console as a traceback
            code, ctype, body = 500, TEXT, f"internal error: {type(e).__name__}: {e}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged: a scrape a second would drown the console


TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class HealthServer:
    """The endpoint: `start` binds and serves from daemon threads, `close` stops it. A sink too
    (its `flush` is the agent loop's heartbeat); subscribe it on the bus.

    `wake` (set with `set_wake` once the processes exist) makes the agent's blocked `wait`
    return. Raises ElaunchError from `start` when the address cannot be bound any more.
    """

    def __init__(self, views: ViewSource, addr: str, port: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._views = views
        self._addr, self._port = addr, port
        self._clock = clock
        self._beat = clock()
        self._beat_cond = threading.Condition()
        self._wake: Callable[[], None] | None = None
        self._waiting = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        from elaunch import metrics  # prometheus-client: only when the endpoint is on

        self._metrics = metrics
        self._registry = metrics.registry(views)

    @property
    def port(self) -> int:
        """The port listened on (the one picked, for `--health-port 0`)."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self._addr}]" if ":" in self._addr else self._addr
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        try:
            self._server = _Server(self._addr, self._port, self)
        except OSError as e:
            raise ElaunchError(f"health endpoint {self._addr}:{self._port}: {e.strerror or e}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="elaunch-health", daemon=True
        )
        self._thread.start()

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        """Stop serving at once: the serving loop is woken by a connection of our own rather than
        left to notice the request at its next poll (up to half a second at every exit)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        stopper = threading.Thread(target=server.shutdown, name="elaunch-health-stop", daemon=True)
        stopper.start()
        deadline = time.monotonic() + 5
        while stopper.is_alive() and time.monotonic() < deadline:
            self._poke(server)
            stopper.join(0.05)
        server.server_close()
        if thread is not None:
            thread.join(timeout=1)

    def _poke(self, server: _Server) -> None:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._addr, self._addr)
        try:
            with socket.create_connection((host, server.server_address[1]), timeout=0.5):
                pass
        except OSError:
            pass

    # -- sink: the heartbeat ----------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        pass

    def flush(self) -> None:
        self._beat = self._clock()
        if self._waiting:
            with self._beat_cond:
                self._beat_cond.notify_all()

    # -- answers ------------------------------------------------------------------------------
    def alive(self) -> tuple[bool, str]:
        """(alive, reason): the agent's loop handled a wake-up within LIVENESS_TIMEOUT seconds."""
        asked = self._clock()
        if asked - self._beat <= BEAT_FRESH:
            return True, "agent loop responsive"
        if self._wake is None:
            return True, "agent starting"
        with self._beat_cond:
            self._waiting += 1
            try:
                self._wake()
                self._beat_cond.wait_for(lambda: self._beat >= asked, timeout=LIVENESS_TIMEOUT)
            finally:
                self._waiting -= 1
        if self._beat >= asked:
            return True, "agent loop responsive"
        return False, f"agent loop has not answered a wake-up for {self._clock() - self._beat:.1f}s"

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for a GET of `path`."""
        if path == "/healthz":
            ok, why = self.alive()
            return (200 if ok else 503), TEXT, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode()
        if path == "/readyz":
            ok, why = readiness(self._views.view)
            return (200 if ok else 503), TEXT, f"{'ready' if ok else 'not ready'}: {why}\n".encode()
        if path == "/status":
            doc = status_doc(self._views.view, time.time())
            return 200, JSON, (json.dumps(doc) + "\n").encode()
        if path == "/metrics":
            return 200, self._metrics.CONTENT_TYPE, self._metrics.exposition(self._registry)
        if path == "/":
            return 200, TEXT, b"elaunch: /healthz /readyz /status /metrics\n"
        return 404, TEXT, f"not found: {path} (try /healthz /readyz /status /metrics)\n".encode()
