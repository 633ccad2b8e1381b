"""`python -m elaunch`."""

from elaunch.cli import entry

entry()
