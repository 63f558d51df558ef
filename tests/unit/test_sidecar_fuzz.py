"""The sidecar's HTTP API fuzzed from its own OpenAPI (schemathesis, in-process over ASGI): no
request gets a 500, and no request without the bearer token gets a customer.

Behind the sidecar stands a fake worker that answers every customer lookup with a customer,
whatever the request carries: so only the sidecar's own token check stands between a request
and the customer, and a response naming the customer proves the request had the token.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from journey.core.aggregates import PartitionAggregate
from journey.core.snapshot import Snapshot
from journey.core.state import CustomerState
from journey.settings import Settings
from journey.sidecar.app import create_sidecar

TOKEN = "fuzz-token-5f2c9a"
#: In every customer the fake worker serves: a response with it shows a customer.
MARKER = "customer-marker-7d1e0b"
PARTITIONS = 2


class _FakeWorker(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"customer_id": self.path.rsplit("/", 1)[-1], "stage": "purchase", "note": MARKER}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _worker() -> str:
    """A fake worker for the whole session. Its thread is a daemon and it is never shut down:
    shutdown() from a generator's finally, run when the module is finalized at exit, could wait
    for good on a serve_forever loop that no longer runs (seen as a hung pytest)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


WORKER_URL = _worker()
APP = create_sidecar(Settings(partitions=PARTITIONS, api_token=TOKEN, worker_urls=WORKER_URL), consume=False)
for _p in range(PARTITIONS):  # every partition reported: the aggregate endpoints answer with numbers
    _st = CustomerState()
    _st.stage, _st.first_channel, _st.channels = 1, "email", {"email": 2}
    APP.state.journey.book.offer(Snapshot(_p, 5, "fuzz", time.time(), PartitionAggregate.of([_st])))
APP.state.journey.consumer.kafka_ok = APP.state.journey.consumer.caught_up = True  # as if it had read the topic

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def _no_server_error(ctx: Any, response: Any, case: Any) -> bool:
    """No 5xx but 503, the documented "not ready yet" (e.g. a snapshot gone stale while it runs)."""
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.formatted_path} answered {response.status_code}: {response.text[:300]}"
    )
    return True


def _has_the_token(authorization: str | None) -> bool:
    """The header carries the token (the scheme's case does not matter, RFC 7235)."""
    return authorization is not None and authorization[:7].lower() == "bearer " and authorization[7:].strip() == TOKEN


def _shows_no_customer_without_the_token(ctx: Any, response: Any, case: Any) -> bool:
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    if MARKER in response.text:
        assert _has_the_token(headers.get("authorization")), (
            f"{case.method} {case.formatted_path} answered {response.status_code} with a customer to "
            f"Authorization {headers.get('authorization')!r}"
        )
    return True


def _forgets_no_one_without_the_token(ctx: Any, response: Any, case: Any) -> bool:
    """A DELETE (a forget) is never accepted without the token."""
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    if case.method.upper() == "DELETE" and 200 <= response.status_code < 300:
        assert _has_the_token(headers.get("authorization")), (
            f"DELETE {case.formatted_path} answered {response.status_code} to Authorization {headers.get('authorization')!r}"
        )
    return True


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_500_and_no_customer_without_the_token(case: Any) -> None:
    case.call_and_validate(checks=[_no_server_error, _shows_no_customer_without_the_token, _forgets_no_one_without_the_token])


def test_the_fake_worker_and_the_token_do_show_a_customer() -> None:
    """The check above can fail: with the token, the sidecar does show the fake worker's customer."""
    from fastapi.testclient import TestClient

    with TestClient(APP) as client:
        shown = client.get("/customers/c-1", headers={"Authorization": f"Bearer {TOKEN}"})
        assert shown.status_code == 200 and MARKER in shown.text
        assert client.get("/customers/c-1", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200  # RFC 7235
        for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                       {"Authorization": f"Bearer{TOKEN}"}):
            refused = client.get("/customers/c-1", headers=header)
            assert refused.status_code == 401 and MARKER not in refused.text
            assert client.delete("/customers/c-1", headers=header).status_code == 401
