"""Importing torch for the agent's own use (the c10d store, counting XPUs), without torch's noise.

Importing torch prints things meant for training code, not for a launcher: C++ log lines, and
Python warnings such as "Failed to initialize NumPy: No module named 'numpy'" where numpy is not
installed (torch/_subclasses/functional_tensor.py). The agent uses neither numpy nor anything those
lines concern, so while it imports torch the C++ log is set to FATAL (unless the user set
`TORCH_CPP_LOG_LEVEL`) and warnings raised by the import are dropped. The workers import torch
themselves and see everything.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from types import ModuleType

_LOCK = threading.Lock()
_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"


def import_quietly(name: str) -> ModuleType:
    """`importlib.import_module(name)` (a torch module) with torch's import-time output silenced.

    Raises ImportError as the import does. Thread-safe: threads importing at once wait for one
    another, so none sees a half-imported module.
    """
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        ours = _LOG_LEVEL not in os.environ and "torch" not in sys.modules
        if ours:
            os.environ[_LOG_LEVEL] = "FATAL"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return importlib.import_module(name)
        finally:
            if ours:
                os.environ.pop(_LOG_LEVEL, None)
