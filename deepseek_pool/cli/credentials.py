"""The API key (from the environment or a file, never from an argument that ``ps`` shows) and
the client that a command's connection options describe."""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from ..client import DeepSeekClient
from ..config import ENV_API_KEY
from ..errors import ConfigurationError
from .console import CommandFailed


def read_api_key(path: Optional[str]) -> str:
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                key = file.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise CommandFailed(f"cannot read the API key file {path}: {reason}") from None
        if not key:
            raise CommandFailed(f"the API key file {path} is empty")
        return key
    key = os.environ.get(ENV_API_KEY, "").strip()
    if not key:
        raise CommandFailed(f"no API key: set {ENV_API_KEY} or pass --api-key-file PATH (a file holding the key)")
    return key


def client_from_args(args: argparse.Namespace, **options: Any) -> DeepSeekClient:
    try:
        return DeepSeekClient(
            read_api_key(args.api_key_file), base_url=args.base_url, model=args.model, timeout=args.timeout, **options
        )
    except ConfigurationError as err:
        raise CommandFailed(str(err)) from None
