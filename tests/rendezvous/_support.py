"""Helpers for the rendezvous tests: deadlines instead of sleeps, nodes as threads, a store
connection that can be cut like a dead host."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from elaunch.errors import StoreError
from elaunch.rendezvous.api import NodeInfo, RendezvousConfig, RendezvousSettings
from elaunch.rendezvous.dynamic import DynamicRendezvous
from elaunch.rendezvous.store import MemoryStore, Store

T = TypeVar("T")

# Short timings so the suite stays fast: beats every 0.2 s, lost after 1 s, last call 0.5 s.
FAST = {
    "heartbeat_timeout": 1.0,
    "keep_alive_interval": 0.2,
    "last_call_timeout": 0.5,
    "join_timeout": 20.0,
    "close_timeout": 2.0,
    "read_timeout": 10.0,
}


def settings(conf: dict[str, float] | None = None) -> RendezvousSettings:
    """Typed settings from a --rdzv-conf-like dict of timings (FAST when None)."""
    values = dict(FAST if conf is None else conf)
    attempts = int(values.pop("keep_alive_max_attempt", 3))
    return RendezvousSettings(**values, keep_alive_max_attempt=attempts)


def config(
    backend: str, port: int, run_id: str = "job", nnodes: tuple[int, int] = (2, 2), **kw: Any
) -> RendezvousConfig:
    """A RendezvousConfig on 127.0.0.1:`port` with FAST settings unless `settings=` is given."""
    from elaunch.rendezvous.api import Endpoint

    kw.setdefault("settings", settings())
    return RendezvousConfig(
        backend=backend,  # type: ignore[arg-type]
        run_id=run_id,
        min_nodes=nnodes[0],
        max_nodes=nnodes[1],
        endpoint=Endpoint("127.0.0.1", port),
        **kw,
    )


def info(host: str, node_rank: int | None = None, port: int = 29500, lws: int = 1) -> NodeInfo:
    return NodeInfo(host=host, role="default", local_world_size=lws, master_port=port, node_rank=node_rank)


class Call:
    """Run `fn` in a thread; `result()` joins with a deadline and returns or re-raises."""

    def __init__(self, fn: Callable[[], Any], name: str = "call") -> None:
        self._box: dict[str, Any] = {}
        self._t = threading.Thread(target=self._run, args=(fn,), name=f"test-{name}", daemon=True)
        self._t.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._box["value"] = fn()
        except BaseException as e:
            self._box["error"] = e

    def done(self) -> bool:
        return not self._t.is_alive()

    def result(self, timeout: float = 15.0) -> Any:
        self._t.join(timeout)
        if self._t.is_alive():
            raise AssertionError(f"{self._t.name} still blocked after {timeout} s")
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]

    def error(self, timeout: float = 15.0) -> BaseException:
        try:
            value = self.result(timeout)
        except AssertionError:
            raise
        except BaseException as e:
            return e
        raise AssertionError(f"expected an error, got {value!r}")


class Severable:
    """A store connection that can be cut: afterwards every call (on it and its clones) fails,
    as if the node's host had vanished from the network."""

    def __init__(self, inner: Store, cut: threading.Event | None = None) -> None:
        self._inner = inner
        self._cut = cut or threading.Event()

    def cut(self) -> None:
        self._cut.set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name in ("close",):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            if self._cut.is_set():
                raise StoreError(f"rendezvous store at {self._inner.address}: {name} failed: connection cut")
            return attr(*a, **kw)

        return call

    @property
    def address(self) -> str:
        return self._inner.address

    def clone(self) -> Severable:
        return Severable(self._inner.clone(), self._cut)


def nodes(
    store: MemoryStore,
    n: int,
    min_nodes: int,
    max_nodes: int,
    run_id: str = "job",
    conf: dict[str, float] | None = None,
    priorities: Sequence[int] = (),
    severable: bool = False,
) -> list[DynamicRendezvous]:
    out = []
    for i in range(n):
        conn: Any = store.clone()
        if severable:
            conn = Severable(conn)
        prio = priorities[i] if i < len(priorities) else 0
        out.append(DynamicRendezvous(conn, run_id, min_nodes, max_nodes, settings(conf), f"n{i}", master_priority=prio))
    return out


def shutdown_all(rdzvs: Sequence[Any]) -> None:
    for r in rdzvs:
        r.shutdown()


def rdzv_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("elaunch-rdzv")]


class FreezableProxy:
    """A TCP forwarder to 127.0.0.1:`target`; `freeze()` stops forwarding but keeps every
    connection open, like a link that was cut (packets vanish, nothing is closed)."""

    def __init__(self, target: int) -> None:
        import socket

        self._target = target
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._socks: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="test-proxy")
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        import socket

        self._srv.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._socks += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: Any, dst: Any) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([src], [], [], 0.1)
            if not ready or self._frozen.is_set():
                continue
            try:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for s in [*self._socks, self._srv]:
            s.close()
