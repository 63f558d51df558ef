"""The customer lookup: forwarded to a worker's /customers/{id} page.

Faust routes that page to the worker owning the customer's partition, so the sidecar never
holds customer states; any live worker URL will do, and the next one is tried when one is down.
(aiohttp because Faust already depends on it.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from journey.errors import SidecarError


class WorkersUnreachable(SidecarError):
    """No configured worker answered."""


async def fetch_customer(worker_urls: list[str], customer_id: str, authorization: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    """(status, JSON body) of the first worker that answers for ``customer_id``; for a linked
    anonymous id, the customer it belongs to (with ``requested_id``)."""
    status, body = await _fetch(worker_urls, customer_id, authorization, timeout_s)
    linked = body.get("linked_to") if status == 200 and isinstance(body, dict) else None
    if isinstance(linked, str) and linked != customer_id:
        status, body = await _fetch(worker_urls, linked, authorization, timeout_s)
        if status == 200 and isinstance(body, dict):
            body = {**body, "requested_id": customer_id}
    return status, body


async def _fetch(worker_urls: list[str], customer_id: str, authorization: str, timeout_s: float) -> tuple[int, Any]:
    errors: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for base in worker_urls:
            url = f"{base.rstrip('/')}/customers/{quote(customer_id, safe='')}"
            try:
                async with session.get(url, headers={"Authorization": authorization}) as response:
                    try:
                        return response.status, await response.json(content_type=None)
                    except ValueError:
                        errors.append(f"{base}: answered {response.status} without JSON")
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"{base}: {type(exc).__name__}")
    raise WorkersUnreachable(
        f"no journey worker answered ({'; '.join(errors)}); check that workers run and that "
        f"JOURNEY_WORKER_URLS lists their web addresses"
    )
