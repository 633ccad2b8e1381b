"""Project scripts as a package, so tests import the test bed as ``scripts.testbed``.

Benchmarks run as files (``python scripts/bench_x.py``), which puts ``scripts/`` itself first on
``sys.path``: they import the same modules as top-level ``benchlib`` and ``testbed``.
"""
