"""The key of a cached answer: a versioned hash of the endpoint and the whole body as sent.

No allow-list: every field of the body counts, nested ones too, so two requests share an
entry only when DeepSeek would receive the same JSON value. An omitted field differs from
one sent with its default value (the server's default may change), ``1`` differs from
``1.0`` and ``true``. Only the order of an object's keys does not count: JSON objects have
none, so the body is hashed in canonical form (keys sorted, no spaces). Peers' caches that
hash an allow-list of fields serve wrong answers when a field they left out changes the
output (instructor #2585, LiteLLM #25673); this one cannot.

The endpoint is the full URL the body is posted to, without any user and password it may
carry: another server (a proxy, llama.cpp, FakeDeepSeek) answers differently. Headers are
not part of the key, and the API key never enters it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["KEY_VERSION", "canonical_json", "request_key"]

#: Bumped whenever the key's recipe or the entries' meaning changes: old entries then never match.
KEY_VERSION = 1


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON: keys sorted, no spaces, UTF-8 (what the body *is*, not its layout)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # a user and password in the URL never enter the key
    return urlunsplit((parts.scheme.lower(), host.lower(), parts.path, parts.query, ""))


def request_key(url: str, body: Mapping[str, Any]) -> str:
    """``"v1-<sha256 hex>"`` of the endpoint and the body (raises TypeError for a body that is not JSON)."""
    try:
        payload = canonical_json({"endpoint": _endpoint(url), "body": body})
    except (TypeError, ValueError) as err:
        raise TypeError(f"the request is not JSON serializable: {err}") from None
    return f"v{KEY_VERSION}-{hashlib.sha256(payload).hexdigest()}"
