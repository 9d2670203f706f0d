"""The canonical body: built once at ingest, byte for byte what every subscriber gets."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhookd.events import (
    MAX_ID_LENGTH,
    MAX_TYPE_LENGTH,
    EventError,
    _timestamp,
    canonical_json,
    parse_event,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# What ids and types are made of: printable ASCII but space (0x21-0x7E).
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
tokens = st.text(PRINTABLE, min_size=1, max_size=MAX_ID_LENGTH)

# U+0000 is refused in data (see the NUL tests below), and a lone surrogate by the API
# before it parses an event (api/common.py): any other character may travel.
NO_NUL = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(NO_NUL),
    lambda children: st.lists(children) | st.dictionaries(st.text(NO_NUL), children),
    max_leaves=20,
)


@given(data=json_values, event_id=tokens, event_type=tokens)
def test_the_body_is_the_canonical_json_of_the_whole_event(
    data: object, event_id: str, event_type: str
) -> None:
    event = parse_event({"id": event_id, "type": event_type, "data": data}, 0, NOW)
    whole = {"id": event_id, "type": event_type, "timestamp": _timestamp(NOW), "data": data}
    assert event.body == canonical_json(whole).encode("utf-8")
    assert event.payload == canonical_json(data)
    # canonical_json is json.dumps with these arguments (one encoder, made once).
    assert canonical_json(whole) == json.dumps(
        whole, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def test_the_body_timestamp_is_utc_to_the_microsecond_whatever_the_offset() -> None:
    """_timestamp remembers what it wrote for a time: the same instant given with another
    offset is written in UTC all the same, and another instant differently."""
    from datetime import timedelta, timezone

    paris = timezone(timedelta(hours=1))
    first = _timestamp(datetime(2026, 1, 1, 13, 0, 0, 5, tzinfo=paris))
    again = _timestamp(datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=UTC))
    other = _timestamp(datetime(2026, 1, 1, 12, 0, 0, 6, tzinfo=UTC))
    assert first == again == "2026-01-01T12:00:00.000005Z"
    assert other == "2026-01-01T12:00:00.000006Z"


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


# --- what ids and types may hold: what a header value carries safely ----------------

# Every character a header cannot carry (control characters: aiohttp refuses to send
# them, so such an id failed every attempt for ever), a space (stripped at a header's
# ends), and non-ASCII (obs-text in a header; look-alikes and normalisation in a type).
REFUSED_CHARACTERS = [
    "\n",
    "\r",
    "\x00",
    "\x1b",
    "\x7f",
    "\t",
    " ",
    "\x85",  # NEL, a C1 control
    "\u2028",  # LINE SEPARATOR
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "é",
    "\U0001f600",
]


@pytest.mark.parametrize("field", ["id", "type"])
@pytest.mark.parametrize("bad", REFUSED_CHARACTERS, ids=ascii)
def test_a_character_a_header_cannot_carry_is_refused_naming_the_field(
    field: str, bad: str
) -> None:
    raw = {"id": "evt_1", "type": "t", "data": {}, field: f"poison{bad}0"}
    with pytest.raises(EventError) as info:
        parse_event(raw, 3, NOW)
    message = str(info.value)
    assert message.startswith(f"events[3].{field}: ")
    assert "at position 6" in message


@given(
    field=st.sampled_from(["id", "type"]),
    head=st.text(PRINTABLE, max_size=10),
    bad=st.characters(exclude_characters=[chr(c) for c in range(0x21, 0x7F)]),
    tail=st.text(max_size=10),
)
def test_any_character_outside_printable_ascii_is_refused(
    field: str, head: str, bad: str, tail: str
) -> None:
    raw = {"id": "evt_1", "type": "t", "data": {}, field: head + bad + tail}
    with pytest.raises(EventError, match=rf"^events\[0\]\.{field}: "):
        parse_event(raw, 0, NOW)


# Types starting with "webhookd." are webhookd's own operational events, refused from
# producers (tested apart): hypothesis found "webhookd." itself among the tokens.
@given(event_id=tokens, event_type=tokens.filter(lambda t: not t.startswith("webhookd.")))
def test_every_printable_ascii_id_and_type_is_accepted(event_id: str, event_type: str) -> None:
    event = parse_event({"id": event_id, "type": event_type, "data": None}, 0, NOW)
    assert (event.event_id, event.event_type) == (event_id, event_type)


@pytest.mark.parametrize(("field", "limit"), [("id", MAX_ID_LENGTH), ("type", MAX_TYPE_LENGTH)])
def test_ids_and_types_have_a_length_limit(field: str, limit: int) -> None:
    fits = {"id": "evt_1", "type": "t", "data": {}, field: "x" * limit}
    assert getattr(parse_event(fits, 0, NOW), f"event_{field}") == "x" * limit
    with pytest.raises(EventError, match=rf"^events\[0\]\.{field}: {limit + 1} characters"):
        parse_event({**fits, field: "x" * (limit + 1)}, 0, NOW)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {}}, r"^events\[0\]\.type: required"),
        ({"type": 5, "data": {}}, r"^events\[0\]\.type: not a string"),
        ({"type": "", "data": {}}, r"^events\[0\]\.type: empty"),
        ({"type": "t", "id": 7, "data": {}}, r"^events\[0\]\.id: not a string"),
        ({"type": "t", "id": "", "data": {}}, r"^events\[0\]\.id: empty"),
    ],
)
def test_missing_or_wrong_ids_and_types_say_what_is_wrong(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(EventError, match=message):
        parse_event(raw, 0, NOW)


def test_an_absent_id_is_generated_and_valid() -> None:
    event = parse_event({"type": "invoice.paid", "data": {}}, 0, NOW)
    assert event.event_id.startswith("evt_")
    assert parse_event({"id": event.event_id, "type": "t", "data": {}}, 0, NOW)


@pytest.mark.parametrize(
    "data", [{"a": "x\x00y"}, {"k\x00": 1}, ["ok", {"deep": ["\x00"]}], "\\\x00"]
)
def test_a_nul_character_in_data_is_refused_naming_the_field(data: object) -> None:
    # PostgreSQL's jsonb cannot store U+0000: refused on every engine, so both agree.
    with pytest.raises(EventError, match=r"events\[0\]\.data: .*U\+0000"):
        parse_event({"type": "t", "data": data}, 0, datetime.now(UTC))


@pytest.mark.parametrize("data", [["\\u0000"], {"a": "\\\\u0000"}, {"a": "u0000"}])
def test_the_text_of_a_nul_escape_is_not_a_nul(data: object) -> None:
    event = parse_event({"type": "t", "data": data}, 0, datetime.now(UTC))
    assert json.loads(event.payload) == data
