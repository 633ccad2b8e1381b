"""Standard descriptors 0, 1 and 2 that exist: opened on /dev/null when the caller closed them.

`elaunch ... >&-` (or `2>&-`, `<&-`) starts Python with `sys.stdout` (...) set to None, and the
first file elaunch opens would take the free number: a log file written as "stdout", a pipe read
as "stdin". So before anything else is opened, each missing descriptor is opened on /dev/null
(POSIX's advice for daemons, and what the kernel does for set-uid programs) and the matching
`sys.std*` object is rebuilt on it. What was closed stays silent: output to a closed stdout is
discarded, as the user asked, and the run goes on.
"""

from __future__ import annotations

import os
import sys

_NAMES = ("stdin", "stdout", "stderr")


def ensure_std_fds() -> tuple[int, ...]:
    """Open every closed descriptor among 0, 1, 2 on /dev/null; returns those that were closed."""
    missing: list[int] = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            missing.append(fd)
    for fd in missing:
        new = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself when the ones below are open
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
        os.set_inheritable(fd, True)
        name = _NAMES[fd]
        if getattr(sys, name) is None:
            mode = "r" if fd == 0 else "w"
            stream = open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
    return tuple(missing)
