"""The canonical body: built once at ingest, byte for byte what every subscriber gets."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from webhookd.events import _timestamp, canonical_json, parse_event

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(data=json_values, event_id=st.text(min_size=1, max_size=20), event_type=st.text(min_size=1))
def test_the_body_is_the_canonical_json_of_the_whole_event(
    data: object, event_id: str, event_type: str
) -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    event = parse_event({"id": event_id, "type": event_type, "data": data}, 0, now)
    whole = {"id": event_id, "type": event_type, "timestamp": _timestamp(now), "data": data}
    assert event.body == canonical_json(whole).encode("utf-8")
    assert event.payload == canonical_json(data)


def test_the_body_has_sorted_keys_and_no_spaces() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    event = parse_event({"id": "evt_1", "type": "t", "data": {"b": 1, "a": "é"}}, 0, now)
    assert (
        event.body
        == (
            '{"data":{"a":"é","b":1},"id":"evt_1",'
            '"timestamp":"2026-01-01T00:00:00.000000Z","type":"t"}'
        ).encode()
    )
