"""The endpoints the fake serves, and the errors it answers with DeepSeek's own wording."""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["ERRORS", "ROUTES"]

ERRORS: Dict[int, Tuple[str, str, str]] = {
    402: ("Insufficient Balance", "unknown_error", "invalid_request_error"),
    429: (
        # DeepSeek's documented text for a 429 that is not about the account's cap.
        "Rate Limit Reached: you are sending your requests too quickly. Please pace your requests reasonably.",
        "rate_limit_error",
        "rate_limit_exceeded",
    ),
    500: (
        "Internal Server Error: our server encountered an issue. Please retry your request after a brief wait.",
        "internal_error",
        "internal_error",
    ),
    502: (
        "Bad Gateway: the upstream server returned an invalid response. Please retry your request after a brief wait.",
        "internal_error",
        "bad_gateway",
    ),
    503: (
        "Server Overloaded: the server is overloaded due to high traffic. Please retry your "
        "request after a brief wait.",
        "service_unavailable_error",
        "server_overloaded",
    ),
}

# path -> (method, kind, beta); every endpoint also answers under /v1.
ROUTES: Dict[str, Tuple[str, str, bool]] = {}
for _prefix in ("", "/v1"):
    ROUTES[_prefix + "/chat/completions"] = ("POST", "chat", False)
    ROUTES[_prefix + "/beta/chat/completions"] = ("POST", "chat", True)
    ROUTES[_prefix + "/beta/completions"] = ("POST", "fim", True)
    ROUTES[_prefix + "/models"] = ("GET", "models", False)
    ROUTES[_prefix + "/user/balance"] = ("GET", "balance", False)
