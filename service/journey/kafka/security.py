"""Connection security towards the brokers (TLS, SASL), for Faust and for plain aiokafka clients."""

from __future__ import annotations

import ssl
from typing import Any

from journey.errors import SettingsError
from journey.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.kafka_security_protocol:
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    return ssl.create_default_context(cafile=cafile)


def _check(settings: Settings) -> None:
    if settings.kafka_security_protocol not in PROTOCOLS:
        raise SettingsError(
            f"JOURNEY_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r}: use one of {', '.join(PROTOCOLS)}"
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        if settings.kafka_sasl_mechanism not in MECHANISMS:
            raise SettingsError(f"JOURNEY_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r}: use one of {', '.join(MECHANISMS)}")
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise SettingsError(
                f"JOURNEY_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
                f"JOURNEY_KAFKA_SASL_USERNAME and JOURNEY_KAFKA_SASL_PASSWORD"
            )


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka producers, consumers and admin clients."""
    _check(settings)
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = _ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """The ``broker_credentials`` for a Faust app (None for PLAINTEXT)."""
    import faust
    from faust.types.auth import SASLMechanism

    _check(settings)
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        mechanism=SASLMechanism(settings.kafka_sasl_mechanism),
        ssl_context=_ssl_context(settings),
    )
