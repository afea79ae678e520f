"""The ``deepseek-pool`` command: ``run``, ``report``, ``demo``, ``chat``, ``serve-fake``.

An application, not a library layer: it parses arguments, reads the environment, and is
the one place in the package that may decide process-wide state (signal handlers and
the like) for the process it runs in. :mod:`~deepseek_pool.cli.commands` holds the parser
and :func:`main`; each command's work is in its own module (:mod:`~deepseek_pool.cli.run`,
:mod:`~deepseek_pool.cli.report` with :mod:`~deepseek_pool.cli.report_plot`,
:mod:`~deepseek_pool.cli.demo`, :mod:`~deepseek_pool.cli.chat`), over what they share
(:mod:`~deepseek_pool.cli.console`, :mod:`~deepseek_pool.cli.options`,
:mod:`~deepseek_pool.cli.credentials`, :mod:`~deepseek_pool.cli.logs`).

May import: everything else in the package (today :mod:`deepseek_pool` for its version,
:mod:`deepseek_pool.batch`, :mod:`deepseek_pool.pool`, :mod:`deepseek_pool.budget`,
:mod:`deepseek_pool.money` (the peak calendar and the off-peak gate),
:mod:`deepseek_pool.client` and the foundation modules :mod:`deepseek_pool.config`,
:mod:`~deepseek_pool.errors`, :mod:`~deepseek_pool.models`, :mod:`~deepseek_pool.process` for
the application's call), and the simulator
(:mod:`deepseek_pool.testing`) only when a command uses it. Nothing imports the CLI.
"""

from .commands import main

__all__ = ["main"]
