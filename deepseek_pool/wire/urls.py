"""A client's URLs as given: ``base_url`` checked and trimmed, and where DeepSeek's beta lives."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError

__all__ = ["default_beta_url", "normalize_base_url"]


def normalize_base_url(url: str) -> str:
    """``url`` without surrounding space or a trailing slash; an http(s) URL or :class:`ConfigurationError`."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base_url must be an http(s) URL like https://api.deepseek.com, got {url!r}")
    return url


def default_beta_url(base_url: str) -> str:
    """DeepSeek's beta endpoints live beside ``/v1``, not under it."""
    if base_url.endswith("/v1"):
        return base_url[:-3] + "/beta"
    return base_url + "/beta"
