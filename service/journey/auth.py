"""The bearer-token check shared by the worker's and the sidecar's customer endpoints."""

from __future__ import annotations

import hmac


def bearer_ok(header: str | None, token: str | None) -> bool:
    """True when the Authorization header carries the configured token (constant-time compare)."""
    if not token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())
