"""The sidecar's HTTP endpoints (JSON, plus /metrics and the live page)."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from journey.auth import refusal
from journey.core.clock import iso
from journey.core.events import CHANNELS
from journey.core.funnel import attribution, channel_report, funnel, no_stage_count, stage_counts
from journey.core.privacy import id_length_error
from journey.errors import BrokerError, InputError
from journey.sidecar.proxy import WorkersUnreachable, fetch_customer
from journey.sidecar.state import SidecarState

router = APIRouter()


def _state(request: Request) -> SidecarState:
    return request.app.state.journey


def _complete(state: SidecarState) -> None:
    """Refuse to answer with numbers that leave out partitions nobody has reported yet, or that
    may be older than what the aggregates topic holds (not read to its end yet)."""
    if not state.consumer.caught_up:
        raise HTTPException(
            status_code=503,
            detail="the sidecar is still reading the aggregates topic to its end after its start: the numbers read so far may be old; see /readyz",
            headers={"Retry-After": "1"},
        )
    missing = state.book.missing(state.consumer.input_partitions)
    if missing:
        raise HTTPException(
            status_code=503,
            detail=(
                f"no numbers yet for input partition(s) {missing} of {state.consumer.input_partitions}: "
                "workers publish them about a second after they own a partition (a new worker needs "
                "~30 s to join); see /readyz"
            ),
            headers={"Retry-After": "1"},
        )


def _check_channel(channel: str | None) -> None:
    if channel is not None and channel not in CHANNELS:
        raise HTTPException(
            status_code=422, detail=f"unknown first_touch channel {channel!r}; use one of {', '.join(sorted(CHANNELS))}"
        )


@router.get("/stages", summary="Customers standing in each stage now")
async def stages(request: Request) -> dict[str, Any]:
    state = _state(request)
    _complete(state)
    agg = state.book.merged()
    counts = stage_counts(agg)
    return {"stages": counts, "total": sum(counts.values()), "as_of": iso(state.book.as_of())}


@router.get("/funnel", summary="Reached counts, conversion, drop-off and median time per stage")
async def get_funnel(
    request: Request,
    first_touch: str | None = Query(None, description="only customers whose first touchpoint came through this channel"),
) -> dict[str, Any]:
    _check_channel(first_touch)
    state = _state(request)
    _complete(state)
    rows = funnel(state.book.merged(), first_touch)
    return {"first_touch": first_touch, "customers": rows[0]["reached"], "stages": rows, "as_of": iso(state.book.as_of())}


@router.get("/channels", summary="Touchpoints, customers reaching each stage, and purchase attribution per channel")
async def channels(request: Request) -> dict[str, Any]:
    state = _state(request)
    _complete(state)
    agg = state.book.merged()
    return {"channels": channel_report(agg), "attribution": attribution(agg), "as_of": iso(state.book.as_of())}


@router.get("/live", summary="Everything the live page shows, in one consistent response")
async def live(request: Request) -> dict[str, Any]:
    state = _state(request)
    agg = state.book.merged()
    ready, detail = state.ready()
    # The page needs no worker names (hosts and ports: /readyz has them, for operators).
    detail.pop("workers", None)
    now = time.time()
    counts = stage_counts(agg)
    return {
        "ready": ready,
        "status": detail,
        "stages": counts,
        "total": sum(counts.values()),
        "no_stage": no_stage_count(agg),
        "funnel": funnel(agg),
        "channels": channel_report(agg),
        "churn_risk": dict(sorted(agg.churn.items())),
        "pain_points": dict(sorted(agg.pain.items())),
        "as_of": iso(state.book.as_of()),
        "staleness_seconds": round(max(state.book.ages(now).values(), default=0.0), 3),
    }


def _refused(state: SidecarState, authorization: str | None) -> JSONResponse | None:
    """The answer to a customer request without the bearer token (None: it has it)."""
    refused = refusal(authorization, state.settings.api_token)
    if refused is None:
        return None
    status, body, headers = refused
    return JSONResponse(body, status_code=status, headers=headers)


def _unencoded_slash(request: Request) -> JSONResponse | None:
    """A 404 for a path with a literal '/' after /customers/ (a trailing slash, a doubled one):
    an id holding a slash arrives percent-encoded (%2F), so this is a mistyped path, and taking
    it as the id would look up, or forget, somebody else."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    tail = raw.split(b"?", 1)[0].split(b"/customers/", 1)[-1]
    if b"/" not in tail:
        return None
    return JSONResponse({"error": "no such path: after /customers/ comes one id; percent-encode a '/' in it as %2F"},
                        status_code=404)


@router.get("/customers/{customer_id:path}", summary="One customer's state and recent transitions (bearer token)")
async def customer(request: Request, customer_id: str, authorization: str | None = Header(None)) -> JSONResponse:
    state = _state(request)
    refused = _refused(state, authorization) or _unencoded_slash(request)
    if refused is not None:
        return refused
    wrong = id_length_error(customer_id)
    if wrong is not None:
        return JSONResponse({"error": wrong}, status_code=422)
    try:
        status, body = await fetch_customer(state.worker_urls, customer_id, authorization or "")
    except WorkersUnreachable as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse(body, status_code=status)


@router.delete("/customers/{customer_id:path}", status_code=202,
               summary="Forget a customer everywhere: state, linked anonymous ids, later touchpoints (bearer token)")
async def forget_customer(
    request: Request, customer_id: str, authorization: str | None = Header(None),
    reason: str | None = Query(None, max_length=500, description="why (kept with the request, for the audit trail)"),
) -> JSONResponse:
    state = _state(request)
    refused = _refused(state, authorization) or _unencoded_slash(request)
    if refused is not None:
        return refused
    try:
        request_id = await state.forget(customer_id, reason)
    except InputError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    except BrokerError as exc:
        return JSONResponse({"error": f"the request could not be published: {exc}"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({
        "request_id": request_id,
        "status": "accepted",
        "detail": (f"the worker owning the id applies it within seconds and publishes customer_forgotten with this "
                   f"request_id on {state.settings.topic_privacy}; GET /customers/{{id}} answers 404 from then on"),
    }, status_code=202)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="Kafka reachable, snapshots read and present for every partition")
async def readyz(request: Request) -> JSONResponse:
    ready, detail = _state(request).ready()
    return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    html = resources.files("journey.sidecar").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})
