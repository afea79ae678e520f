"""The ``deepseek-pool`` command: ``run``, ``demo``, ``chat``, ``serve-fake``.

An application, not a library layer: it parses arguments, reads the environment, and is
the one place in the package that may decide process-wide state (signal handlers and
the like) for the process it runs in.

May import: everything else in the package, the simulator (:mod:`deepseek_pool.testing`)
only when a command uses it. Nothing imports the CLI.
"""

from .commands import main

__all__ = ["main"]
