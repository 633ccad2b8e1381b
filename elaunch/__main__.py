"""`python -m elaunch`."""

from elaunch.stdfds import ensure_std_fds

ensure_std_fds()  # before anything else opens a file and takes a closed 0/1/2 (stdfds.py)

from elaunch.cli import entry  # noqa: E402

entry()
