"""``python -m deepseek_pool``: the ``deepseek-pool`` command."""

from __future__ import annotations

import sys

from .cli.commands import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m deepseek_pool"))
