"""POST /v1/events: events from any language, validated one by one, emitted in order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from operator import itemgetter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from tokenquota.errors import IntegrationError
from tokenquota.schemas import DEFAULTS_SESSION, Event, EventDecodeError, decode
from tokenquota.schemas.codec import (
    WIRE_REQUIRED,
    duplicate_key_reason,
    note_repeats,
    repeated_keys,
)

from .auth import Caller
from .metrics import INGESTED
from .state import admin, state_of

__all__ = ["MAX_EVENTS", "router"]

router = APIRouter()

#: Events one request may carry; more is a 413 (send several requests).
MAX_EVENTS = 5_000


class FieldProblem(BaseModel):
    """Where an event is wrong (a dotted field path) and why."""

    path: str
    reason: str


class ItemResult(BaseModel):
    """What became of one item of the request."""

    index: int
    event_id: str | None
    status: Literal["accepted", "invalid"]
    #: acked: the broker has it; spooled: on this host's disk, sent when Kafka is back.
    delivery: Literal["acked", "spooled"] | None = None
    errors: list[FieldProblem] = []


class IngestResult(BaseModel):
    """Per item: accepted (with its delivery) or invalid (with its field errors)."""

    accepted: int
    invalid: int
    results: list[ItemResult]


#: The whole body in one pass of pydantic-core: the usual, all-valid request.
_ARRAY: TypeAdapter[list[Event]] = TypeAdapter(Annotated[list[Event], Field(max_length=MAX_EVENTS)])


def _all_valid(body: bytes) -> list[Event] | None:
    """Every event of the body when all are valid (else None: check them one by one)."""
    try:
        events = _ARRAY.validate_json(body)
    except ValidationError:
        return None
    if not all(event.__pydantic_fields_set__.issuperset(WIRE_REQUIRED) for event in events):
        return None
    # No key given twice (see decode()): an array of n events has n - 1 commas between
    # them, each event's members and its source's one fewer than their keys; more commas
    # than that (a repeat, or a comma inside a string) take a second parse.
    structural = (
        len(events)
        - 1
        + sum(
            len(e.__pydantic_fields_set__) + len(e.source.__pydantic_fields_set__) - 2
            for e in events
        )
    )
    if body.count(b",") <= structural:
        return events
    try:
        parsed = json.loads(body, object_pairs_hook=note_repeats)
    except (ValueError, RecursionError):  # pydantic-core read it: not expected
        return None
    return None if repeated_keys(parsed) else events


def _problems(item: Any) -> tuple[Event | None, list[FieldProblem]]:
    if not isinstance(item, dict):
        return None, [FieldProblem(path="<event>", reason="must be a JSON object")]
    repeated = repeated_keys(item)
    if repeated:
        return None, [
            FieldProblem(path=path, reason=duplicate_key_reason(times)) for path, times in repeated
        ]
    try:
        return decode(json.dumps(item)), []
    except EventDecodeError as exc:
        return None, [FieldProblem(path=e.path, reason=e.reason) for e in exc.errors]


@router.post(
    "/v1/events",
    response_model=IngestResult,
    summary="Ingest a JSON array of events",
    responses={413: {"description": "more than MAX_EVENTS events"}},
)
async def ingest(request: Request, caller: Caller = admin) -> JSONResponse:
    """Each item is checked against the event schemas (schemas/json); valid ones are
    emitted in order through the emitter, invalid ones are answered with their field
    errors and never stop the valid ones. `accepted` means the broker acknowledged the
    event or, when Kafka is unreachable, it is durably spooled on this host."""
    state = state_of(request)
    body = await request.body()
    checked = _all_valid(body)
    if checked is not None:
        valid = list(enumerate(checked))
        results: list[dict[str, Any]] = []
        total = len(checked)
    else:
        valid, results, total = _one_by_one(body)
    for position, (index, event) in enumerate(valid):
        if event.session_id != DEFAULTS_SESSION:
            stored = state.quota.stored_session_id(event.session_id)
            if stored != event.session_id:
                valid[position] = (index, event.model_copy(update={"session_id": stored}))
    deliveries: Sequence[str] = ()
    if valid:
        try:
            deliveries = await state.quota.emitter.emit_many([event for _, event in valid])
        except IntegrationError as exc:
            raise HTTPException(503, f"nothing of this request was accepted: {exc}") from None
    accepted = [
        {"index": index, "event_id": str(event.event_id), "status": "accepted",
         "delivery": delivery, "errors": []}
        for (index, event), delivery in zip(valid, deliveries, strict=True)
    ]  # fmt: skip
    # In request order (already sorted when every item was valid).
    results = sorted(results + accepted, key=itemgetter("index"))
    INGESTED.labels("accepted").inc(len(valid))
    INGESTED.labels("invalid").inc(total - len(valid))
    # Built as plain JSON (the schema above documents it): pydantic models for thousands
    # of items would cost more than the validation of the events.
    return JSONResponse({"accepted": len(valid), "invalid": total - len(valid), "results": results})


def _one_by_one(body: bytes) -> tuple[list[tuple[int, Event]], list[dict[str, Any]], int]:
    """(index, event) of the valid items, the results of the invalid ones, the count."""
    try:
        items = json.loads(body, object_pairs_hook=note_repeats)
    except ValueError as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(400, "the body is not JSON this API reads: nested too deeply") from None
    if not isinstance(items, list):
        raise HTTPException(400, "the body must be a JSON array of events")
    if len(items) > MAX_EVENTS:
        raise HTTPException(413, f"{len(items)} events in one request; at most {MAX_EVENTS}")
    valid: list[tuple[int, Event]] = []
    invalid: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        event, problems = _problems(item)
        if event is None:
            event_id = item.get("event_id") if isinstance(item, dict) else None
            invalid.append(
                ItemResult(
                    index=index,
                    event_id=event_id if isinstance(event_id, str) else None,
                    status="invalid",
                    errors=problems,
                ).model_dump()
            )
        else:
            valid.append((index, event))
    return valid, invalid, len(items)
