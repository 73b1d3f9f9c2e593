"""Build each tokenquota event, encode it for Kafka, decode it back, and show a rejection.

Run: .venv/bin/python examples/build_and_encode_events.py
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

from tokenquota.schemas import (
    ApiCost,
    BudgetSet,
    Event,
    EventDecodeError,
    Source,
    TokenReserved,
    TokenUsed,
    decode,
    encode,
    utc_now,
)


def main() -> None:
    source = Source(component="cli", name="example")
    now = utc_now()
    reservation_id = uuid4()
    events: list[Event] = [
        BudgetSet(
            session_id="alice",
            source=source,
            daily_limit=20_000,
            monthly_limit=400_000,
            hard_limit=1_000_000,
            warning_threshold=Decimal("0.8"),
            critical_threshold=Decimal("0.95"),
        ),
        TokenReserved(
            session_id="alice",
            source=source,
            reservation_id=reservation_id,
            tokens=1_500,
            priority="high",
            expires_at=now + timedelta(minutes=5),
        ),
        TokenUsed(
            session_id="alice",
            source=source,
            reservation_id=reservation_id,
            model="gpt-4o",
            input_tokens=900,
            output_tokens=350,
            operation="chat.completions",
            counted_by="provider",
        ),
        ApiCost(
            session_id="alice",
            source=source,
            api="openai",
            model="gpt-4o",
            input_tokens=900,
            output_tokens=350,
            cost_usd=Decimal("0.005750"),
            price_source="example",
        ),
    ]
    for event in events:
        wire = encode(event)
        assert decode(wire) == event
        print(f"{event.event_type:<14} {len(wire):>4} bytes  {wire[:90].decode()}...")

    try:
        decode(b'{"event_type": "TokenUsed", "input_tokens": -3}')
    except EventDecodeError as exc:
        print("\nrejected as expected:")
        for error in exc.errors:
            print(f"  {error.path}: {error.reason}")


if __name__ == "__main__":
    main()
