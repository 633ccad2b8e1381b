"""Process trees for tests, the test bed and benchmarks (psutil): find descendants, kill them by PID.

Kill only what you started, never by name, and never hang on a process that refuses to die:
every function here is bounded in time. A zombie counts as dead (it holds no resources; its
parent reaps it).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable

import psutil

__all__ = [
    "alive",
    "cmdline",
    "descendants",
    "kill_pids",
    "kill_tree",
    "pids_mentioning",
    "remove_orphaned_dirs",
    "stop_popen",
]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline(pid: int) -> str | None:
    """The command line of ``pid`` as one string, None if it is gone."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def descendants(roots: Iterable[int]) -> list[int]:
    """All living descendants of ``roots`` (not the roots themselves), each once."""
    seen: set[int] = set()
    out: list[int] = []
    for root in roots:
        try:
            kids = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            continue
        for kid in kids:
            if kid.pid not in seen:
                seen.add(kid.pid)
                out.append(kid.pid)
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


def kill_tree(roots: Iterable[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL ``roots`` and their descendants (collected before the signal, so none escapes by
    being re-parented); wait up to ``timeout`` s and return the PIDs still alive."""
    roots = list(roots)
    return kill_pids([*roots, *descendants(roots)], timeout=timeout)


def stop_popen(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 5.0) -> None:
    """Stop ``proc`` and its descendants: SIGTERM, then SIGKILL after ``grace`` s, then reap.

    Descendants are collected before the signal because they are reparented
    (and lost to a tree walk) as soon as their parent exits.
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
        kill_tree(kids, timeout=grace)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass  # unkillable (D state); nothing more a test can do


def pids_mentioning(text: str) -> list[int]:
    """PIDs of living processes (not this one) one of whose argv words contains ``text``.

    Used only with text unique to its caller (a temp dir it created), so it never matches a
    foreign process.
    """
    found: list[int] = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(text in word for word in p.info["cmdline"] or ()):
            found.append(p.pid)
    return found


def remove_orphaned_dirs(prefix: str) -> list[str]:
    """Temp dirs ``<prefix><owner pid>-*`` whose owner died: kill what runs from them, remove them.

    Returns the dirs removed. The processes killed are those whose argv names the dir.
    """
    removed: list[str] = []
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{glob.escape(prefix)}*")):
        m = re.match(rf"{re.escape(prefix)}(\d+)-", os.path.basename(path))
        if m is None or alive(int(m.group(1))):
            continue
        kill_pids(pids_mentioning(path + os.sep), timeout=5.0)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
