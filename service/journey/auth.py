"""The bearer-token check shared by the worker's and the sidecar's customer endpoints."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

#: (status, JSON body, headers) of a refused customer request.
Refusal = tuple[int, dict[str, str], dict[str, str]]

_SCHEME = "bearer "


def bearer_ok(header: str | None, token: SecretStr | None) -> bool:
    """True when the Authorization header carries the configured token (constant-time compare;
    the scheme's case does not matter, RFC 7235).

    No token configured (None or blank) never matches."""
    secret = token.get_secret_value() if token is not None else ""
    if not secret or not header or header[:len(_SCHEME)].lower() != _SCHEME:
        return False
    return hmac.compare_digest(header[len(_SCHEME):].strip().encode(), secret.encode())


def refusal(header: str | None, token: SecretStr | None) -> Refusal | None:
    """The answer to a customer request without the bearer token (None: it has it). The
    endpoints are off (404) while no token is configured."""
    if token is None or not token.get_secret_value():
        return 404, {"error": "the customer endpoint is off: set JOURNEY_API_TOKEN (workers and sidecar) to enable it"}, {}
    if not bearer_ok(header, token):
        return 401, {"error": "missing or wrong bearer token: send Authorization: Bearer <JOURNEY_API_TOKEN>"}, {"WWW-Authenticate": "Bearer"}
    return None
