"""The key-value store a multi-node rendezvous runs on: a small protocol, an in-memory store for
tests, and an adapter over torch's TCPStore that imports torch only when one is really built.

Every operation has a bound: blocking calls take a timeout, the others use the connection's
timeout. Connection failures and timeouts surface as `StoreError` naming the store's address.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from elaunch.errors import StoreError
from elaunch.rendezvous import sockbound
from elaunch.rendezvous.retry import Retry, retry_until
from elaunch.rendezvous.sockbound import ClientSocket
from elaunch.torchimport import import_quietly

Value = str | bytes


def _b(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


@runtime_checkable
class Store(Protocol):
    """What the rendezvous needs from a store. Semantics follow torch's c10d Store.

    A store object is one connection: a call blocking in `wait` delays other calls on the same
    object, so a thread that must not be delayed uses its own `clone()`.
    """

    @property
    def address(self) -> str:
        """`host:port` (or a name) for error messages."""
        ...

    def set(self, key: str, value: Value) -> None: ...

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value; waits up to `timeout` (default: the store's) for the key to exist."""
        ...

    def add(self, key: str, amount: int) -> int:
        """Atomically add to an integer counter (created at 0) and return the new value."""
        ...

    def append(self, key: str, value: Value) -> None:
        """Atomically append bytes to a key (created empty)."""
        ...

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        """Set `desired` if the current value is `expected` (`""` means: key absent).

        Returns the value now stored. When the key is absent and `expected` is not empty it
        returns `expected` without setting anything (c10d's behaviour), so callers use a
        `desired` value unique to them and compare the result with it.
        """
        ...

    def wait(self, keys: Sequence[str], timeout: float) -> bool:
        """Block until every key exists (True) or `timeout` seconds pass (False)."""
        ...

    def check(self, keys: Sequence[str]) -> bool:
        """True if every key exists; never blocks."""
        ...

    def multi_get(self, keys: Sequence[str], timeout: float | None = None) -> list[bytes]: ...

    def delete_key(self, key: str) -> bool: ...

    def clone(self) -> Store:
        """A new, independent connection to the same store."""
        ...

    def set_timeout(self, timeout: float) -> None:
        """Bound every later non-waiting call on this connection to `timeout` seconds."""
        ...

    def close(self) -> None:
        """Release the connection (and the server, if this object hosts it); idempotent."""
        ...


class MemoryStore:
    """A thread-safe store in one process, with real blocking waits; for tests of the protocol.

    Clones share the data. `close()` on any clone only closes that clone; `fail(reason)` makes
    every clone raise `StoreError` from then on, like a store server that died.
    """

    def __init__(self, timeout: float = 60.0, name: str = "memory") -> None:
        self._shared = _MemoryData(name)
        self._timeout = timeout
        self._closed = False

    @classmethod
    def _view(cls, shared: _MemoryData, timeout: float) -> MemoryStore:
        view = cls.__new__(cls)
        view._shared = shared
        view._timeout = timeout
        view._closed = False
        return view

    @property
    def address(self) -> str:
        return self._shared.name

    def fail(self, reason: str = "the store server died") -> None:
        with self._shared.cond:
            self._shared.failed = reason
            self._shared.cond.notify_all()

    def _guard(self, op: str) -> None:
        if self._closed:
            raise StoreError(f"rendezvous store at {self.address}: {op} on a closed connection")
        if self._shared.failed is not None:
            raise StoreError(f"rendezvous store at {self.address}: {op} failed: {self._shared.failed}")

    def _wait_for(self, keys: Sequence[str], timeout: float, op: str) -> bool:
        d = self._shared
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._guard(op)
            if all(k in d.data for k in keys):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            d.cond.wait(left)

    def set(self, key: str, value: Value) -> None:
        with self._shared.cond:
            self._guard("set")
            self._shared.data[key] = _b(value)
            self._shared.cond.notify_all()

    def get(self, key: str, timeout: float | None = None) -> bytes:
        t = self._timeout if timeout is None else timeout
        with self._shared.cond:
            if not self._wait_for([key], t, "get"):
                raise StoreError(f"rendezvous store at {self.address}: get {key!r} timed out after {t:g} s")
            return self._shared.data[key]

    def add(self, key: str, amount: int) -> int:
        with self._shared.cond:
            self._guard("add")
            d = self._shared.data
            value = int(d.get(key, b"0")) + amount
            d[key] = str(value).encode()
            self._shared.cond.notify_all()
            return value

    def append(self, key: str, value: Value) -> None:
        with self._shared.cond:
            self._guard("append")
            d = self._shared.data
            d[key] = d.get(key, b"") + _b(value)
            self._shared.cond.notify_all()

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        exp, des = _b(expected), _b(desired)
        with self._shared.cond:
            self._guard("compare_set")
            d = self._shared.data
            if key not in d:
                if exp:
                    return exp
                d[key] = des
                self._shared.cond.notify_all()
                return des
            if d[key] == exp:
                d[key] = des
                self._shared.cond.notify_all()
            return d[key]

    def wait(self, keys: Sequence[str], timeout: float) -> bool:
        with self._shared.cond:
            return self._wait_for(keys, timeout, "wait")

    def check(self, keys: Sequence[str]) -> bool:
        with self._shared.cond:
            self._guard("check")
            return all(k in self._shared.data for k in keys)

    def multi_get(self, keys: Sequence[str], timeout: float | None = None) -> list[bytes]:
        t = self._timeout if timeout is None else timeout
        with self._shared.cond:
            if not self._wait_for(keys, t, "multi_get"):
                raise StoreError(f"rendezvous store at {self.address}: multi_get timed out after {t:g} s")
            return [self._shared.data[k] for k in keys]

    def delete_key(self, key: str) -> bool:
        with self._shared.cond:
            self._guard("delete_key")
            return self._shared.data.pop(key, None) is not None

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout

    def clone(self) -> MemoryStore:
        self._guard("clone")
        return MemoryStore._view(self._shared, self._timeout)

    def close(self) -> None:
        self._closed = True

    def list_keys(self) -> list[str]:
        """All keys (for tests and debugging; the c10d store has no cheap equivalent)."""
        with self._shared.cond:
            return sorted(self._shared.data)


class _MemoryData:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.data: dict[str, bytes] = {}
        self.failed: str | None = None


def _import_torch_distributed() -> Any:
    """torch.distributed, imported on first use through `torchimport.import_quietly` (torch's
    import-time warnings and C++ log lines silenced, e.g. a timed-out `wait` is normal for us but
    c10d logs each one; thread-safe and cached in `sys.modules`). Raises StoreError without torch."""
    try:
        return import_quietly("torch.distributed")
    except ImportError as e:  # pragma: no cover - torch is an optional dependency
        raise StoreError(
            "the c10d rendezvous needs PyTorch (pip install torch); only single-node runs work without it"
        ) from e


class _Slot:
    """One call's answer; `done` is a plain lock (held until answered): the cheapest hand-over."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None


class _BoundedCaller:
    """Runs one connection's calls on a thread of its own, so that the caller can give up.

    c10d sets no timeout on a client socket's reads: when the link to the store is cut (not
    closed), a call blocks until TCP gives up, about 15 minutes later. The caller waits for the
    answer with a deadline instead; past it the connection is abandoned (its thread stays
    blocked in the kernel until TCP gives up, then ends) and every later call fails at once.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], _Slot] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self.stuck: str | None = None

    def run(self, fn: Callable[[], Any], bound: float) -> Any:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                    self._thread.start()
        slot = _Slot()
        self._q.put((fn, slot))
        if not slot.done.acquire(timeout=bound):
            self.stuck = f"no answer within {bound:g} s"
            raise TimeoutError(self.stuck)
        if slot.error is not None:
            raise slot.error
        return slot.value

    def _serve(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, slot = item
            item = None
            try:
                slot.value = fn()
            except BaseException as e:
                slot.error = e
            finally:
                del fn  # drop the connection's reference before idling: closing must free it
                slot.done.release()
                del slot  # and the answer's (a clone's TCPStore would outlive its close)

    def close(self) -> None:
        self._q.put(None)


class TCPStoreAdapter:
    """A `Store` over `torch.distributed.TCPStore`: one client connection, maybe hosting the server.

    Build it with `connect_store` (which decides whether to host); `wrap` adapts a TCPStore
    built elsewhere (e.g. a test's). Every call is bounded: waits by their timeout plus
    `timeout`, `get` (c10d's is a wait, then a read) by twice `timeout`, the others by `timeout`.
    When the client's socket is known (`sock`, see `sockbound`: every connection `connect_store`
    and `clone` make) the kernel bounds each read and write and calls run on the caller's thread;
    else (`wrap`) each call runs on a helper thread that the caller waits for with a deadline
    (`_BoundedCaller`). After a call got no answer the connection is abandoned: every later call
    fails at once (a late answer would be read as the next call's).
    """

    def __init__(
        self,
        tcp_store: Any,
        host: str,
        port: int,
        is_host: bool,
        timeout: float,
        sock: ClientSocket | None = None,
    ) -> None:
        self._store: Any = tcp_store
        self._host = host
        self._port = port
        self.is_host = is_host
        """True if this object runs the server: closing it ends the store for everybody."""
        self._timeout = timeout
        dist = _import_torch_distributed()
        self._dist_errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, TimeoutError, OSError)
        self._store_error: type[BaseException] = dist.DistStoreError
        self._network_error: type[BaseException] = dist.DistNetworkError
        self._sock = sock if sock is not None and sock.set_timeout(timeout) else None
        self._caller = None if self._sock is not None else _BoundedCaller(f"elaunch-store-{self.address}")
        self._stuck: str | None = None

    @classmethod
    def wrap(cls, tcp_store: Any, timeout: float = 60.0) -> TCPStoreAdapter:
        return cls(tcp_store, str(tcp_store.host), int(tcp_store.port), False, timeout)

    @property
    def address(self) -> str:
        return _fmt_addr(self._host, self._port)

    @property
    def port(self) -> int:
        return self._port

    @property
    def bounded_by(self) -> str:
        """How calls are bounded: "socket" (kernel timeouts, caller's thread) or "thread"."""
        return "socket" if self._sock is not None else "thread"

    def _err(self, op: str, e: BaseException) -> StoreError:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # c10d appends C++ stack traces
        return StoreError(f"rendezvous store at {self.address}: {op} failed: {first}")

    def _run(self, op: str, fn: Callable[[Any], Any], bound: float | None = None) -> Any:
        store = self._store
        if store is None:
            raise StoreError(f"rendezvous store at {self.address}: {op} on a closed connection")
        if self._stuck is not None:
            raise StoreError(f"rendezvous store at {self.address}: {op} failed: an earlier call got {self._stuck}")
        if self._caller is None:
            try:
                return fn(store)
            except self._network_error as e:
                if "timeout" in str(e).lower():  # c10d's "Socket Timeout": SO_RCVTIMEO / SO_SNDTIMEO
                    self._stuck = f"no answer within {self._timeout:g} s"
                    raise StoreError(f"rendezvous store at {self.address}: {op} failed: {self._stuck}") from None
                raise self._err(op, e) from None
            except self._dist_errors as e:
                raise self._err(op, e) from None
        try:
            return self._caller.run(lambda: fn(store), self._timeout if bound is None else bound)
        except TimeoutError as e:
            if self._caller.stuck is not None:
                self._stuck = self._caller.stuck
            raise self._err(op, e) from None
        except self._dist_errors as e:
            raise self._err(op, e) from None

    def _call(self, op: str, *args: Any) -> Any:
        return self._run(op, lambda store: getattr(store, op)(*args))

    def set(self, key: str, value: Value) -> None:
        self._call("set", key, _b(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        if timeout is not None and not self.wait([key], timeout):
            raise StoreError(f"rendezvous store at {self.address}: get {key!r} timed out after {timeout:g} s")
        return bytes(self._call("get", key))

    def add(self, key: str, amount: int) -> int:
        return int(self._call("add", key, amount))

    def append(self, key: str, value: Value) -> None:
        self._call("append", key, _b(value))

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        return bytes(self._call("compare_set", key, _b(expected), _b(desired)))

    def wait(self, keys: Sequence[str], timeout: float) -> bool:
        keys = list(keys)
        delta = timedelta(seconds=max(timeout, 0.001))
        store_error = self._store_error

        def wait(store: Any) -> bool:
            try:
                store.wait(keys, delta)
            except store_error as e:
                if "timeout" in str(e).lower():
                    return False
                raise
            return True

        return bool(self._run("wait", wait, max(timeout, 0.0) + self._timeout))

    def check(self, keys: Sequence[str]) -> bool:
        return bool(self._call("check", list(keys)))

    def multi_get(self, keys: Sequence[str], timeout: float | None = None) -> list[bytes]:
        if timeout is not None and not self.wait(keys, timeout):
            raise StoreError(f"rendezvous store at {self.address}: multi_get timed out after {timeout:g} s")
        return [bytes(v) for v in self._call("multi_get", list(keys))]

    def delete_key(self, key: str) -> bool:
        return bool(self._call("delete_key", key))

    def set_timeout(self, timeout: float) -> None:
        """Bound every later non-waiting call on this connection."""
        self._call("set_timeout", timedelta(seconds=timeout))
        if self._sock is not None and not self._sock.set_timeout(timeout):
            raise StoreError(f"rendezvous store at {self.address}: set_timeout failed: the connection's socket is gone")
        self._timeout = timeout

    def clone(self) -> TCPStoreAdapter:
        store, sock = sockbound.build(lambda: self._call("clone"), lambda _: self._port)
        return TCPStoreAdapter(store, self._host, self._port, False, self._timeout, sock)

    def close(self) -> None:
        """Drop the connection: the last reference closes the socket (and stops a hosted server)."""
        self._store = None
        if self._caller is not None:
            self._caller.close()


def _fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_local_address(host: str) -> bool:
    """True if `host` names this machine: localhost, a loopback address, this host name, or an
    address some local interface owns (checked by binding to it, which only works locally)."""
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return True
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def _wait_reachable(host: str, port: int, timeout: float) -> None:
    """Connect plain TCP until the server answers (`retry.retry_until`), so an unreachable
    endpoint fails within `timeout` with a clear message (and without importing torch)."""

    def attempt(left: float) -> None:
        try:
            with socket.create_connection((host, port), timeout=min(left, 10.0)):
                return
        except OSError as e:
            raise Retry(str(e)) from None

    def give_up(elapsed: float, last: str) -> StoreError:
        return StoreError(
            f"could not reach the rendezvous store at {_fmt_addr(host, port)}: tried for "
            f"{elapsed:.1f} s (join_timeout {timeout:g} s); last error: {last}. "
            "Is the node that hosts it (the one named by --rdzv-endpoint) running?"
        )

    retry_until(attempt, timeout, give_up)


def connect_store(
    host: str,
    port: int,
    *,
    is_host: bool | None = None,
    connect_timeout: float = 600.0,
    timeout: float = 60.0,
    use_libuv: bool = True,
) -> TCPStoreAdapter:
    """Host the TCPStore server at `host:port` or connect to it, like torch's c10d backend.

    `is_host` True/False forces the choice; None hosts when `host` names this machine and falls
    back to a client when the port is taken (another agent on this machine hosts it).
    `connect_timeout` bounds the whole attempt to reach the server; `timeout` bounds each later
    operation on the connection (c10d's read_timeout).
    """
    want_host = is_local_address(host) if is_host is None else is_host
    if want_host:
        dist = _import_torch_distributed()
        try:
            srv, sock = sockbound.build(
                lambda: dist.TCPStore(
                    host,
                    port,
                    is_master=True,
                    multi_tenant=False,  # a second host in this process must fail, not share the server
                    wait_for_workers=False,
                    timeout=timedelta(seconds=timeout),
                    use_libuv=use_libuv,
                ),
                lambda made: int(made.port),
            )
            return TCPStoreAdapter(srv, host, int(srv.port), True, timeout, sock)
        except (RuntimeError, ValueError, OSError) as e:
            if is_host:
                raise StoreError(f"could not host the rendezvous store at {_fmt_addr(host, port)}: {e}") from None
    _wait_reachable(host, port, connect_timeout)
    dist = _import_torch_distributed()
    # c10d's client handshake reads without a time limit: a server that is not a TCPStore (an
    # HTTP server on the port) would hold this thread forever. It runs on a thread of its own,
    # bounded by the read timeout (then the connection is abandoned, see `_BoundedCaller`).
    bound = max(timeout, 1.0)
    caller = _BoundedCaller(f"elaunch-store-connect-{_fmt_addr(host, port)}")
    try:
        client, sock = sockbound.build(
            lambda: caller.run(
                lambda: dist.TCPStore(
                    host,
                    port,
                    is_master=False,
                    wait_for_workers=False,
                    timeout=timedelta(seconds=bound),
                    use_libuv=use_libuv,
                ),
                bound,
            ),
            lambda _: port,
        )
    except TimeoutError as e:
        if caller.stuck is None:
            raise StoreError(f"could not connect to the rendezvous store at {_fmt_addr(host, port)}: {e}") from None
        raise StoreError(not_a_store(host, port, bound)) from None
    except (RuntimeError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"{not_a_store(host, port, None)} ({first})") from None
    finally:
        caller.close()
    return TCPStoreAdapter(client, host, port, False, timeout, sock)


def not_a_store(host: str, port: int, waited: float | None) -> str:
    """The message for an endpoint that accepts connections but does not speak c10d's store protocol."""
    within = f" within {waited:g} s (read_timeout)" if waited is not None else ""
    return (
        f"the rendezvous endpoint {_fmt_addr(host, port)} accepted a connection but did not answer as a "
        f"rendezvous store{within}: is another program listening on that port? (check --rdzv-endpoint)"
    )
