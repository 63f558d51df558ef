"""Asking journey to forget a customer (or to lift a forgotten id's suppression): one signed
request on the privacy topic, which the worker owning the customer applies (docs/privacy.md).
Used by `journey forget` and the sidecar's DELETE /customers/{id}."""

from __future__ import annotations

import time
import uuid

from journey.core.identity import control_key
from journey.core.privacy import FORGET_REQUESTED, UNDO_REQUESTED, id_length_error, signed_request
from journey.errors import InputError
from journey.kafka.publish import publish_once
from journey.settings import Settings


async def request_forget(settings: Settings, customer_id: str, *, undo: bool = False, reason: str | None = None,
                         source: str = "cli") -> str:
    """Publish a forget (or undo) request for ``customer_id``; returns its request id once the
    broker has it. The workers apply it within seconds when they are running."""
    wrong = id_length_error(customer_id)
    if wrong is not None:
        raise InputError(wrong)
    secret = settings.control_secret.get_secret_value() if settings.control_secret is not None else None
    request_id = uuid.uuid4().hex
    record = signed_request(
        control_key(secret, settings.app_id), UNDO_REQUESTED if undo else FORGET_REQUESTED, customer_id, request_id,
        time.time(), reason=reason, source=source,
    )
    await publish_once(settings, settings.topic_privacy, [record])
    return request_id
