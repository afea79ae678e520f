"""``DEEPSEEK_POOL_LOG=debug|info``: the command's one switch for the package's log lines.

Configuring logging is process-wide state (the ``deepseek_pool`` logger's level and
handlers are shared by everything in the process), so the library never reads this
variable: an application configures logging its own way, and this command, an
application, does it from the variable. It sets the level of the ``deepseek_pool``
logger and, when neither it nor the root logger has a handler, adds one on stderr; both
are put back when the command ends, so :func:`~deepseek_pool.cli.commands.main` called
in-process leaves logging as it found it.

At ``info`` each retry and its wait is a line; at ``debug`` also each attempt, its status,
time to the head and DeepSeek's request id. Every line a call logs names the call
(``call 1f: ...``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Mapping, Optional, TextIO

from .console import CommandFailed

__all__ = ["ENV_LOG", "LEVELS", "logging_from_env"]

ENV_LOG = "DEEPSEEK_POOL_LOG"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def logging_from_env(environ: Optional[Mapping[str, str]] = None, stream: Optional[TextIO] = None) -> Iterator[None]:
    """Log the package's lines as ``DEEPSEEK_POOL_LOG`` asks, for the length of the ``with``.

    :raises CommandFailed: the variable holds something else than ``debug`` or ``info``.
    """
    value = (os.environ if environ is None else environ).get(ENV_LOG, "").strip().lower()
    if not value:
        yield
        return
    level = LEVELS.get(value)
    if level is None:
        raise CommandFailed(f"{ENV_LOG} must be one of {', '.join(LEVELS)}, got {value!r}")
    logger = logging.getLogger("deepseek_pool")
    before = logger.level
    handler: Optional[logging.Handler] = None
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
        if handler is not None:
            logger.removeHandler(handler)
