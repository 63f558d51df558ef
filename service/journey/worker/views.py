"""The worker's own small web surface: /metrics, /healthz, /readyz and the customer lookup the sidecar uses.

The customer lookup is routed by Faust to the worker that owns the customer's partition, so no
process needs every customer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from journey.auth import refusal
from journey.core.identity import alias_of
from journey.core.privacy import is_marker
from journey.core.state import CustomerState
from journey.errors import CorruptState
from journey.worker.faust_internals import built_consumer, fetcher_state

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

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready, detail = readiness(japp)
        return web.json({"ready": ready, **detail}, status=200 if ready else 503)

    @app.table_route(table=customers, match_info="customer_id")
    async def owned_customer(web: Any, request: Any, customer_id: str) -> Any:
        """Answered by the worker owning the customer's partition (Faust forwards it there)."""
        try:
            state = lookup(japp, customer_id)
        except CorruptState as exc:
            return web.json({"error": str(exc)}, status=500)
        if state is None or is_marker(state):  # a forgotten customer is as unknown as one never seen
            return web.json({"error": f"no customer {customer_id!r} has been seen"}, status=404)
        linked = alias_of(state)
        if linked is not None:  # a linked anonymous id: the sidecar asks for the customer next
            return web.json({"customer_id": customer_id, "linked_to": linked})
        return web.json({"customer_id": customer_id, **state.to_public()})

    @app.page("/customers/{customer_id}")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        # The token first: a request without it is refused here, never forwarded to the owner.
        refused = refusal(request.headers.get("Authorization"), settings.api_token)
        if refused is not None:
            status, body, headers = refused
            return web.json(body, status=status, headers=headers)
        return await owned_customer(web, request, customer_id)  # type: ignore[call-arg]  # Faust types the routed view as (view, request)


def lookup(japp: JourneyApp, key: str) -> CustomerState | None:
    """A customer's state as the batches see it: a state staged and not yet in the store
    answers first, so a forget whose confirmation is out reads as gone at once (the table, read
    directly, shows the store, which a stage writes last)."""
    batches = japp.batches
    if batches is None:  # before the first batch: nothing is staged yet
        return japp.customers.get(key)
    store = batches.store
    partition = japp.app.producer.key_partition(store.changelog_topic, key.encode()).partition
    return store.peek(key, partition)


def readiness(japp: JourneyApp) -> tuple[bool, dict[str, Any]]:
    """Ready = the worker has joined its group and is not rebalancing, the customer table's
    partitions are recovered, and its consumer and fetcher run. Otherwise the first reason why not.

    A ready worker also says how far behind it is: ``lag``, the records not yet processed summed
    over its input partitions whose end a fetch has told, and ``catching_up``: more than
    JOURNEY_CATCHING_UP_LAG behind, or some partition's end not known yet. A catching-up worker
    is ready (it is processing). Both are null while the worker is not ready."""
    app = japp.app
    consumer = built_consumer(app)
    detail: dict[str, Any] = {"reason": None, "partitions": [], "generation": app.consumer_generation_id,
                              "rebalances": app.rebalancing_count, "lag": None, "catching_up": None}
    if consumer is not None and consumer.state == "running":
        detail["partitions"] = sorted(tp.partition for tp in consumer.assignment() if tp.topic == japp.settings.topic_touchpoints)
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]  # TableManagerT does not declare it
    if app.should_stop:
        reason = "the worker is stopping"
    elif consumer is None or consumer.state != "running":
        reason = f"the Kafka consumer is not running ({consumer.state if consumer is not None else 'not built yet'})"
    elif app.rebalancing_count == 0:
        reason = "joining the consumer group: no partitions assigned yet"
    elif app.rebalancing:
        reason = "rebalancing: partitions are being reassigned"
    elif recovery.in_recovery:
        reason = f"recovering the customer table from its changelog ({recovery.active_remaining_total()} records to go)"
    elif not recovery.completed.is_set():
        reason = "waiting for the customer table's first recovery"
    elif (state := fetcher_state(app)) != "running":
        reason = f"the fetcher is not running ({state})"
    else:
        lags = japp.aggregates.partition_lag() if japp.aggregates is not None else {}
        detail["lag"] = sum(lag for lag in lags.values() if lag is not None)
        detail["catching_up"] = detail["lag"] > japp.settings.catching_up_lag or None in lags.values()
        return True, detail
    detail["reason"] = reason
    return False, detail
