"""Connection security towards the brokers (TLS, SASL): the one place the ``JOURNEY_KAFKA_*``
settings become client options.

Every Kafka client journey creates takes them from :func:`client_options`: the aiokafka
producers, consumers, admin and bare clients directly (``**client_options(settings)``), the
worker's Faust app through :func:`faust_credentials`, which is built from the same options (so
Faust hands its own aiokafka clients exactly these).
"""

from __future__ import annotations

import ssl
from typing import Any

from journey.settings import Settings

__all__ = ["client_options", "faust_credentials"]


def client_options(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments of every aiokafka client (producer, consumer, admin,
    ``AIOKafkaClient``): ``security_protocol``, plus ``ssl_context`` for TLS and the SASL
    mechanism and credentials for SASL. (The settings were validated when loaded: a SASL
    protocol always comes with a user name and a password.)"""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    tls = protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None) if tls else None
    if protocol == "SSL":
        options["ssl_context"] = context
    elif protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password is not None else None,
            ssl_context=context,
        )
    return options


def faust_credentials(settings: Settings) -> Any:
    """The ``broker_credentials`` of a Faust app (None for PLAINTEXT), from :func:`client_options`:
    Faust turns them back into the same aiokafka options for each client it creates."""
    import faust

    options = client_options(settings)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        mechanism=options["sasl_mechanism"],
        ssl_context=options["ssl_context"],
    )
