"""What every command shares about the console it runs in: the program's name, the exit
statuses, a one-line failure, and whether a stream is a terminal."""

from __future__ import annotations

from typing import TextIO

PROG = "deepseek-pool"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``run`` stopped by SIGTERM (a drain, or a cancel after a second signal): 128 + 15, the
#: status a shell reports for a process SIGTERM ended, as 130 is 128 + SIGINT.
EXIT_TERMINATED = 143
#: ``run`` stopped by its spend cap (``--max-cost``): the items not started are left for a rerun.
EXIT_SPEND_CAP = 3


class CommandFailed(Exception):
    """A clean, one-line failure of a command: message and exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
