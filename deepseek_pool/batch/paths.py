"""What the batch's input and output files share: a path, the error that refuses one, and the
check that it is a regular file (a pipe or a device cannot be read twice or resumed)."""

from __future__ import annotations

import os
import stat
from typing import Union

from ..errors import DeepSeekError

__all__ = ["BatchFileError", "PathLike", "check_regular"]

PathLike = Union[str, "os.PathLike[str]"]


class BatchFileError(DeepSeekError, ValueError):
    """The input or output file cannot be used as given (duplicate custom_ids, output in use)."""


def check_regular(path: PathLike, what: str) -> None:
    """Refuse a path that exists but is no regular file (a device, a FIFO, a directory)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise BatchFileError(f"{os.fspath(path)} is {kind}; the {what} must be a regular file")
