"""Process helpers over /proc: find descendants and kill them by PID.

The test bed must kill only what it started, never by name, and must not hang
on a process that refuses to die; these helpers do exactly that, bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable

__all__ = [
    "alive",
    "children_map",
    "descendants",
    "kill_pids",
    "pids_mentioning",
    "stop_popen",
]


def _stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of ``pid`` or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data.rsplit(")", 1)[-1].split()
    if len(rest) < 2:
        return None
    return rest[0], int(rest[1])


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie holds no resources)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children_map() -> dict[int, list[int]]:
    """Map each PID to its children's PIDs, from one scan of /proc."""
    result: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            result.setdefault(st[1], []).append(int(name))
    return result


def descendants(roots: Iterable[int]) -> list[int]:
    """All living descendants of ``roots`` (not the roots themselves)."""
    cmap = children_map()
    seen: set[int] = set()
    stack = list(roots)
    out: list[int] = []
    while stack:
        for child in cmap.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                out.append(child)
                stack.append(child)
    return [p for p in out if alive(p)]


def kill_pids(pids: Iterable[int], timeout: float = 5.0, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to each PID and wait up to ``timeout`` s; return those still alive."""
    todo = [p for p in set(pids) if p > 1 and p != os.getpid()]
    for pid in todo:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while True:
        todo = [p for p in todo if alive(p)]
        if not todo or time.monotonic() >= deadline:
            return todo
        time.sleep(0.02)


def stop_popen(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """Stop ``proc`` and its descendants: SIGTERM, then SIGKILL after ``grace`` s, then reap.

    Descendants are collected before the signal because they are reparented
    (and lost to a PPID walk) as soon as their parent exits.
    """
    if proc.poll() is None:
        kids = descendants([proc.pid])
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kids += descendants([proc.pid])
            proc.kill()
        kill_pids(kids + descendants(kids), timeout=grace)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state); nothing more a test can do


def pids_mentioning(text: str) -> list[int]:
    """PIDs of living processes one of whose argv words contains ``text``.

    Used only to find processes whose command line names a temp dir this test
    bed created (unique per owner PID), so it never matches a foreign process.
    """
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        key = text.encode()
        if any(key in a for a in args) and alive(int(name)):
            found.append(int(name))
    return found
