"""The bearer-token check shared by the worker's and the sidecar's customer endpoints."""

from __future__ import annotations

import hmac

from pydantic import SecretStr


def bearer_ok(header: str | None, token: SecretStr | None) -> bool:
    """True when the Authorization header carries the configured token (constant-time compare).

    No token configured (None or blank) never matches."""
    secret = token.get_secret_value() if token is not None else ""
    if not secret or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), secret.encode())
