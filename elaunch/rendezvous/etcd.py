"""`--rdzv-backend etcd` / `etcd-v2`: the rendezvous `Store` over an external etcd (v3 API).

The same protocol as c10d (`dynamic.DynamicRendezvous`) runs on etcd instead of a TCPStore that
one agent hosts: no node is special, and etcd outlives any of them. The client is etcd3gw (etcd's
HTTP/JSON gateway: no grpc or protobuf to clash with the user's pins); it is imported only when
an `EtcdStore` is built. Atomic operations are etcd transactions; blocking waits are etcd watches
run on the caller's thread with socket deadlines (etcd3gw's own watch has none: see `_watch`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from elaunch.errors import RendezvousClosedError, StoreError
from elaunch.rendezvous.api import Endpoint, EtcdOptions
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.retry import Retry, retry_until
from elaunch.rendezvous.store import Value

_TXN_OPS = 128
"""Operations in one etcd transaction at most (etcd's default `--max-txn-ops`)."""

_KNOWN_MAX = 4096
"""Bound on the per-connection cache of (value, mod_revision) guesses used by `_update`."""


def _bytes(value: Value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(data: object) -> bytes:
    return base64.b64decode(str(data)) if data else b""


def _import_client() -> tuple[Any, Any]:
    """(etcd3gw, requests), imported on first use with a clear error when missing."""
    try:
        import etcd3gw
        import etcd3gw.exceptions
        import requests
    except ImportError as e:  # pragma: no cover - etcd3gw is an optional dependency
        raise StoreError(
            "the etcd rendezvous needs etcd3gw (pip install 'elaunch[etcd]'); c10d and static work without it"
        ) from e
    return etcd3gw, requests


def _reason(e: BaseException) -> str:
    """One short line for an etcd3gw/requests error (they nest the OS error deep in a repr)."""
    parts = [str(getattr(e, "detail_text", "") or ""), *(str(a) for a in e.args if a)]
    text = " ".join(p for p in parts if p) or type(e).__name__
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1).strip()
    if "timed out" in text.lower():
        return "no answer (timed out)"
    try:
        body = json.loads(parts[0]) if parts[0] else None
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("message") or body.get("error")):
        return str(body.get("message") or body.get("error"))
    return text.strip().splitlines()[0][:300]


class _ProbeError(StoreError):
    """etcd did not answer as etcd; `retry`: whether trying again may help."""

    def __init__(self, address: str, reason: str, retry: bool = False) -> None:
        super().__init__(f"rendezvous store at {address}: connect failed: {reason}")
        self.reason = reason
        self.retry = retry


class EtcdStore:
    """A `Store` over etcd's v3 API: one HTTP session (thread-safe, pooled connections).

    Every key is `prefix + key`. `add`, `append` and `compare_set` are transactions that compare
    the key's mod_revision, retried on conflict within the connection's timeout; `get`/`wait`
    block on watches. Every call is bounded: waits by their timeout (plus the connection's
    timeout for one request), the others by the connection's timeout. Connection failures raise
    `StoreError` naming `host:port`. Proxies from the environment are not used.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 60.0,
        options: EtcdOptions | None = None,
        api_path: str | None = None,
    ) -> None:
        etcd3gw, requests = _import_client()
        self._host = host
        self._port = port
        self._opts = options or EtcdOptions()
        self._prefix = self._opts.prefix.encode()
        self._timeout = timeout
        self._api = api_path
        """The gateway's path (`/v3/`), from `probe`; else etcd3gw finds it on first use."""
        self._client = etcd3gw.client(host=host, port=port, protocol=self._opts.protocol, timeout=timeout)
        session = self._client.session  # etcd3gw's own (its `session=` argument is newer than 2.4)
        session.trust_env = False  # an HTTP(S)_PROXY meant for the internet must not carry the rendezvous
        if self._opts.ca_cert:
            session.verify = self._opts.ca_cert
        if self._opts.cert:
            session.cert = (self._opts.cert, self._opts.key) if self._opts.key else self._opts.cert
        self._session = session
        self._errors: tuple[type[BaseException], ...] = (
            etcd3gw.exceptions.Etcd3Exception,
            requests.RequestException,
            ValueError,
            OSError,
        )
        self._closed = False
        self._lease: int | None = None
        """A lease every key this connection writes is attached to (`use_lease`), or None."""
        self._lock = threading.Lock()  # _known only
        self._known: dict[str, tuple[bytes | None, int]] = {}

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return str(Endpoint(self._host, self._port))

    @property
    def prefix(self) -> str:
        return self._opts.prefix

    def _fail(self, op: str, why: str) -> StoreError:
        return StoreError(f"rendezvous store at {self.address}: {op} failed: {why}")

    def _post(self, op: str, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise StoreError(f"rendezvous store at {self.address}: {op} on a closed connection")
        try:
            out = self._client.post(self._url(path), json=payload)
        except self._errors as e:
            raise self._fail(op, _reason(e)) from None
        if not isinstance(out, dict):
            raise self._fail(op, f"unexpected answer {out!r:.100}")
        return out

    def _url(self, path: str) -> str:
        api = self._api or self._client.api_path  # the latter asks etcd (GET /version) once
        return f"{self._client.base_url}{api}{path.lstrip('/')}"

    def _key(self, key: str) -> str:
        return _b64(self._prefix + key.encode())

    def _read(self, op: str, keys: Sequence[str]) -> tuple[list[bytes | None], int]:
        """The keys' values (None: absent) and the revision they were read at: one request, or one
        per `_TXN_OPS` keys (etcd refuses larger transactions); then the first request's revision,
        so that a watch from it misses nothing set after any of the reads."""
        values: list[bytes | None] = []
        first = 0
        for i in range(0, max(1, len(keys)), _TXN_OPS):
            ks = [self._key(k) for k in keys[i : i + _TXN_OPS]]
            if len(ks) == 1:
                out = self._post(op, "/kv/range", {"key": ks[0]})
                ranges = [out]
            else:
                out = self._post(op, "/kv/txn", {"success": [{"request_range": {"key": k}} for k in ks]})
                ranges = [r.get("response_range", {}) for r in out.get("responses", [])]
            for r in ranges:
                kvs = r.get("kvs") or []
                values.append(_unb64(kvs[0].get("value")) if kvs else None)
            first = first or int(out.get("header", {}).get("revision", 0))
        return values, first

    def _remember(self, k: str, value: bytes | None, mod: int) -> None:
        with self._lock:
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[k] = (value, mod)

    def _update(self, op: str, key: str, change: Callable[[bytes | None], bytes | None]) -> tuple[bytes | None, bool]:
        """Atomically replace the value v (None: absent) by change(v); change returns None to
        leave it. Returns (the value now stored, whether we wrote it).

        One transaction: put if the key's mod_revision is still the one we assume, else read it.
        The first assumption is what this connection last saw (a node's own counters: one round
        trip), but "leave it" is only ever decided on a value read fresh from etcd.
        """
        k = self._key(key)
        with self._lock:
            value, mod = self._known.get(k, (None, 0))
        fresh = False
        deadline = time.monotonic() + self._timeout
        attempts = 0
        while True:
            new = change(value)
            if new is None:
                if fresh:
                    return value, False
                (value,), _ = self._read(op, [key])
                fresh = True
                continue
            txn = {
                "compare": [{"key": k, "result": "EQUAL", "target": "MOD", "mod_revision": str(mod)}],
                "success": [{"request_put": self._put(k, new)}],
                "failure": [{"request_range": {"key": k}}],
            }
            out = self._post(op, "/kv/txn", txn)
            if out.get("succeeded"):
                self._remember(k, new, int(out.get("header", {}).get("revision", 0)))
                return new, True
            rng = (out.get("responses") or [{}])[0].get("response_range", {})
            kvs = rng.get("kvs") or []
            value = _unb64(kvs[0].get("value")) if kvs else None
            mod = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            self._remember(k, value, mod)
            fresh = True
            attempts += 1
            if time.monotonic() > deadline:
                raise self._fail(
                    op, f"{key!r} still changing under us after {attempts} attempts in {self._timeout:g} s"
                )

    def _put(self, k: str, value: bytes) -> dict[str, str]:
        """A put request for the (encoded) key `k`, attached to this connection's lease if any."""
        req = {"key": k, "value": _b64(value)}
        if self._lease is not None:
            req["lease"] = str(self._lease)
        return req

    # -- leases (docs/rendezvous.md#etcd: the job's keys vanish with it) ---------------------------
    def use_lease(self, lease: int | None) -> None:
        """Attach every key this connection (and its later clones) writes to `lease`."""
        self._lease = lease

    def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (etcd may round it up to its minimum); its id."""
        out = self._post("grant_lease", "/lease/grant", {"TTL": int(ttl), "ID": 0})
        try:
            return int(out["ID"])
        except (KeyError, ValueError):
            raise self._fail("grant_lease", f"unexpected answer {out!r:.100}") from None

    def keep_alive(self, lease: int) -> int:
        """Renew `lease`: its new TTL in seconds, or -1 when it already expired or was revoked (its
        keys are gone). `StoreError` when etcd does not answer, or answers with an error (the
        gateway's stream then holds `error` rather than `result`: that says nothing of the lease)."""
        out = self._post("keep_alive", "/lease/keepalive", {"ID": str(lease)})
        result = out.get("result")
        if not isinstance(result, dict):
            error = out.get("error")
            why = error.get("message", error) if isinstance(error, dict) else out
            raise self._fail("keep_alive", f"{why!s:.200}")
        # etcd answers an unknown (expired, revoked) lease with TTL 0, which JSON leaves out
        ttl = int(result.get("TTL", 0))
        return ttl if ttl > 0 else -1

    def revoke_lease(self, lease: int) -> None:
        """End `lease` now: etcd deletes every key attached to it."""
        self._post("revoke_lease", "/kv/lease/revoke", {"ID": str(lease)})

    def _watch(self, key: str, after: int, bound: float) -> bool:
        """Block until etcd reports a change of `key` after revision `after`, or `bound` s pass.

        Our own request, not etcd3gw's `watch`: that one connects without a timeout and reads
        on a pool thread that only a socket shutdown ends (a dead server leaves it blocked).
        Here the socket reads have a deadline, the stream is closed on return, and no thread is
        made. True when the watch ended normally (an event, or the bound); False when it broke
        (the caller backs off, and its next read reports a connection problem).
        """
        start = time.monotonic()
        payload = {"create_request": {"key": self._key(key), "start_revision": str(after + 1)}}
        try:
            resp = self._session.post(
                self._url("/watch"), json=payload, stream=True, timeout=(min(bound, self._timeout), bound)
            )
        except self._errors:
            return time.monotonic() - start >= bound
        with resp:
            if resp.status_code != 200:
                return False
            buf = b""
            try:
                for chunk in resp.iter_content(chunk_size=None):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if not line.strip():
                            continue
                        result = json.loads(line).get("result")
                        if not isinstance(result, dict):
                            return False  # an error message instead of a result
                        if result.get("events"):
                            return True
                        if result.get("canceled"):
                            # compacted past `after`: the caller re-reads at a newer revision
                            return bool(result.get("compact_revision"))
            except self._errors:
                pass
        return time.monotonic() - start >= bound - 0.01  # the read deadline ended it: normal

    def _await(self, op: str, keys: Sequence[str], timeout: float) -> list[bytes] | None:
        """The keys' values once all exist, or None after `timeout` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        backoff = 0.05
        while True:
            values, rev = self._read(op, keys)
            missing = [k for k, v in zip(keys, values, strict=True) if v is None]
            if not missing:
                return [v for v in values if v is not None]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._watch(missing[0], rev, left):
                backoff = 0.05
            else:  # a broken watch: do not spin on it
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(2 * backoff, 1.0)

    def probe(self, timeout: float) -> None:
        """Ask etcd its version (GET /version, bounded by `timeout`) and use the matching API path.

        Raises `_ProbeError`, whose `retry` says whether trying again may help (no answer yet)
        or not (something that is not etcd answers, or TLS fails).
        """
        _, requests = _import_client()
        try:
            r = self._session.get(f"{self._client.base_url}/version", timeout=max(0.05, min(timeout, self._timeout)))
        except requests.exceptions.SSLError as e:
            raise _ProbeError(self.address, f"TLS: {_reason(e)}", retry=False) from None
        except (requests.RequestException, OSError) as e:
            raise _ProbeError(self.address, _reason(e), retry=True) from None
        try:
            body = r.json() if r.status_code == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or "etcdserver" not in body:
            text = " ".join(r.text.split())[:120]
            hint = " (protocol=https?)" if "https" in text.lower() else ""
            raise _ProbeError(
                self.address, f"it answers, but not as etcd: GET /version gave HTTP {r.status_code} {text!r}{hint}"
            )
        self._api = _api_path(str(body["etcdserver"]))

    # -- the Store protocol -----------------------------------------------------------------------
    def set(self, key: str, value: Value) -> None:
        out = self._post("set", "/kv/put", self._put(self._key(key), _bytes(value)))
        self._remember(self._key(key), _bytes(value), int(out.get("header", {}).get("revision", 0)))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        t = self._timeout if timeout is None else timeout
        got = self._await("get", [key], t)
        if got is None:
            raise StoreError(f"rendezvous store at {self.address}: get {key!r} timed out after {t:g} s")
        return got[0]

    def add(self, key: str, amount: int) -> int:
        def change(v: bytes | None) -> bytes | None:
            if amount == 0 and v is not None:
                return None  # a read (c10d's add 0); absent keys are created at 0
            try:
                return str(int(v or b"0") + amount).encode()
            except ValueError:
                raise self._fail("add", f"{key!r} does not hold an integer: {v!r:.60}") from None

        value, _ = self._update("add", key, change)
        try:
            return int(value or b"0")
        except ValueError:
            raise self._fail("add", f"{key!r} does not hold an integer: {value!r:.60}") from None

    def append(self, key: str, value: Value) -> None:
        tail = _bytes(value)
        self._update("append", key, lambda v: (v or b"") + tail)

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        exp, des = _bytes(expected), _bytes(desired)

        def change(v: bytes | None) -> bytes | None:
            if v is None:
                return des if not exp else None
            return des if v == exp else None

        value, _ = self._update("compare_set", key, change)
        return exp if value is None else value  # absent, expected not empty: c10d returns expected

    def wait(self, keys: Sequence[str], timeout: float) -> bool:
        return self._await("wait", list(keys), timeout) is not None

    def check(self, keys: Sequence[str]) -> bool:
        if not keys:
            return True
        values, _ = self._read("check", list(keys))
        return all(v is not None for v in values)

    def multi_get(self, keys: Sequence[str], timeout: float | None = None) -> list[bytes]:
        t = self._timeout if timeout is None else timeout
        if not keys:
            return []
        got = self._await("multi_get", list(keys), t)
        if got is None:
            raise StoreError(f"rendezvous store at {self.address}: multi_get timed out after {t:g} s")
        return got

    def delete_key(self, key: str) -> bool:
        k = self._key(key)
        out = self._post("delete_key", "/kv/deleterange", {"key": k})
        with self._lock:
            self._known.pop(k, None)
        return int(out.get("deleted", 0)) > 0

    def clone(self) -> EtcdStore:
        if self._closed:
            raise StoreError(f"rendezvous store at {self.address}: clone on a closed connection")
        other = EtcdStore(self._host, self._port, timeout=self._timeout, options=self._opts, api_path=self._api)
        other.use_lease(self._lease)
        return other

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout
        self._client.timeout = timeout

    def close(self) -> None:
        """Close this connection's HTTP session (etcd and the other connections are untouched)."""
        if not self._closed:
            self._closed = True
            self._session.close()


def connect_etcd(
    host: str,
    port: int,
    *,
    options: EtcdOptions | None = None,
    connect_timeout: float = 600.0,
    timeout: float = 60.0,
) -> EtcdStore:
    """An `EtcdStore` once etcd at `host:port` answers; retries (`retry.retry_until`, backing off
    to 1 s) until `connect_timeout`, so that a node started before etcd waits for it, and an
    unreachable etcd fails within join_timeout with one `StoreError` line naming host:port.
    Something that answers but is not etcd, and TLS failures, raise at once."""
    store = EtcdStore(host, port, timeout=timeout, options=options)

    def attempt(left: float) -> EtcdStore:
        try:
            store.probe(left)
        except _ProbeError as e:
            if e.retry:
                raise Retry(e.reason) from None
            raise
        return store

    def give_up(elapsed: float, last: str) -> StoreError:
        return StoreError(
            f"could not reach etcd at {store.address}: tried for {elapsed:.1f} s "
            f"(join_timeout {connect_timeout:g} s); last error: {last}. "
            "Is etcd running there (--rdzv-endpoint host:port, port 2379 by default)?"
        )

    try:
        return retry_until(attempt, connect_timeout, give_up)
    except BaseException:
        store.close()
        raise


def refuse_closed_run(store: EtcdStore, run_id: str) -> None:
    """Raise `RendezvousClosedError` if job `run_id` is already closed in this etcd.

    etcd keeps a finished job's keys: the same --rdzv-id again would join a closed job. The
    message names the reason and the `etcdctl` line that removes the old keys.
    """
    keys = Keys(run_id)
    if store.check([keys.closed]):
        reason = store.get(keys.closed).decode(errors="replace")
        where = f"{store.prefix}{keys.prefix}/"
        raise RendezvousClosedError(
            f"rendezvous '{run_id}' in etcd at {store.address} is closed ({reason}); for a new job use "
            f"a new --rdzv-id, or remove the old keys: etcdctl --endpoints {store.address} del --prefix {where}"
        )


def _api_path(version: str) -> str:
    """etcd3gw's rule: the gRPC gateway is at /v3/ from etcd 3.4, /v3beta/ in 3.3, /v3alpha/ before."""
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return "/v3/"
    return "/v3/" if major_minor >= (3, 4) else "/v3beta/" if major_minor >= (3, 3) else "/v3alpha/"


__all__ = ["EtcdStore", "connect_etcd", "refuse_closed_run"]
