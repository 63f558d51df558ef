"""A tiny Faust app for the table fail-over test (not the journey app).

Each event on the updates topic is ``key -> {"seq": n}`` with ``n`` counting
1, 2, 3... per key; the table keeps the highest ``seq`` seen per key, so the
sum of the table's values is the number of updates it holds. Keeping the max
(rather than counting) makes redelivered events harmless: the test measures
what recovery restored, not at-least-once duplicates.

Run as a worker process, configured by environment variables::

    FAILOVER_BROKER=127.0.0.1:9092 FAILOVER_APP_ID=failover FAILOVER_TOPIC=updates \
    FAILOVER_PARTITIONS=4 FAILOVER_WEB_PORT=6070 FAILOVER_DATA_DIR=/tmp/w1 \
    FAILOVER_TRUE_HIGHWATERS=1 python tests/support/failover_app.py

``GET /state/`` on the web port answers with the table's sum and the worker's
assignment; ``settled`` lists the active partitions of the last completed
recovery. ``FAILOVER_TRUE_HIGHWATERS=0`` leaves Faust's stock recovery in place
(to demonstrate the bug); the test suite always runs with the fix.
"""

from __future__ import annotations

import os
from typing import Any

import faust

from journey.worker.faust_internals import install_transport

TABLE_NAME = "latest"


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-{TABLE_NAME}-changelog"


def create_app() -> faust.App:
    env = os.environ
    app_id = env["FAILOVER_APP_ID"]
    partitions = int(env["FAILOVER_PARTITIONS"])
    app = faust.App(
        app_id,
        broker=f"kafka://{env['FAILOVER_BROKER']}",
        store="memory://",
        datadir=env["FAILOVER_DATA_DIR"],
        web_host="127.0.0.1",
        web_port=int(env["FAILOVER_WEB_PORT"]),
        topic_partitions=partitions,
        # Recovery must really replay the changelog, not promote a standby copy.
        table_standby_replicas=0,
        # Quick failure detection and commits keep the test short.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        broker_commit_every=100,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
    )
    if env.get("FAILOVER_TRUE_HIGHWATERS", "1") != "0":
        install_transport(app)

    updates = app.topic(env["FAILOVER_TOPIC"], key_type=str, value_serializer="json")
    latest = app.Table(TABLE_NAME, default=int, partitions=partitions, key_type=str, value_type=int)
    settled: dict[str, Any] = {"actives": [], "generation": None}
    #: Events this process's agent has taken from the updates topic (a re-read after a take-over shows here).
    processed = {"events": 0}

    @app.agent(updates)
    async def apply(stream: faust.StreamT) -> None:
        async for key, value in stream.items():
            processed["events"] += 1
            seq = int(value["seq"])
            if seq > latest[key]:
                latest[key] = seq

    @app.on_rebalance_complete.connect
    async def on_settled(sender: faust.App, **kwargs: Any) -> None:
        # Sent once recovery has replayed the changelogs for this assignment.
        settled["actives"] = sorted(tp.partition for tp in sender.assignor.assigned_actives() if tp.topic == updates.get_topic_name())
        settled["generation"] = sender.consumer_generation_id

    @app.page("/state/")
    async def state(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        values = list(latest.items())
        return web.json(
            {
                "sum": sum(v for _, v in values),
                "keys": len(values),
                "processed": processed["events"],
                "actives": sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == updates.get_topic_name()),
                "settled": settled["actives"],
                "settled_generation": settled["generation"],
                "generation": app.consumer_generation_id,
                "rebalancing": app.rebalancing,
                "in_recovery": app.in_recovery,
            }
        )

    return app


if __name__ == "__main__":
    # loglevel info turns Faust's DEBUG-driven console spinner off.
    faust.Worker(create_app(), loglevel="info", quiet=True).execute_from_commandline()
