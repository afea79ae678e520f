"""Benchmarks of deepseek_pool against its peers; run them with ``python -m benchmarks.run``.

Not part of the installed package: the load server, the contenders and the harness
live here so that anyone with a clone can reproduce the figures in README.rst.
"""
