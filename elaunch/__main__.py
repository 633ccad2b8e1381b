"""`python -m elaunch`."""

import sys

from elaunch.cli import run

sys.exit(run())
