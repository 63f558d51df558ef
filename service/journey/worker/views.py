"""The worker's own small web surface: /metrics, /healthz and the customer lookup the sidecar uses.

The customer lookup is routed by Faust to the worker that owns the customer's partition, so no
process needs every customer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from journey.auth import bearer_ok

if TYPE_CHECKING:
    from journey.worker.app import JourneyApp


def register(japp: JourneyApp) -> None:
    app, customers, settings = japp.app, japp.customers, japp.settings

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(japp.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/customers/{customer_id}")
    @app.table_route(table=customers, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        if not settings.api_token:
            return web.json({"error": "the customer endpoint is off: set JOURNEY_API_TOKEN to enable it"}, status=404)
        if not bearer_ok(request.headers.get("Authorization"), settings.api_token):
            return web.json({"error": "missing or wrong bearer token"}, status=401)
        state = customers.get(customer_id)
        if state is None:
            return web.json({"error": f"no customer {customer_id!r} has been seen"}, status=404)
        return web.json({"customer_id": customer_id, **state.to_public()})
