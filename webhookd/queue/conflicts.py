"""When a re-posted event id is the same event (SPEC: the same type, the same tenant and
the same canonical data bytes), and when it is a conflict (409).

The bytes compared are those receivers get: 1 and 1.0 are other content, as are
10000000000000000 and 1e16, although a database's JSON type holds them equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from webhookd.events import NewEvent, canonical_json


def same_content(
    event: NewEvent,
    stored_type: str,
    stored_tenant: str | None,
    stored_body: bytes | None,
    stored_data: str | None = None,
) -> bool:
    """Whether `event` is the stored one again. A stored body begins with its canonical
    data (events.body: `{"data":<data>,"id":...`), and a JSON value is never a prefix of
    another followed by `,"id":`, so a prefix test compares the data exactly. An event a
    producer wrote in SQL may have no body yet: its data as the database keeps it
    (`stored_data`), made canonical as the scanner will."""
    if stored_type != event.event_type or stored_tenant != event.tenant:
        return False
    if stored_body is not None:
        return stored_body.startswith(b'{"data":' + event.payload.encode() + b',"id":')
    if stored_data is None:
        return False
    try:
        return canonical_json(json.loads(stored_data)) == event.payload
    except (ValueError, RecursionError):  # no canonical form: not this event
        return False


def first_of_each(events: Iterable[NewEvent]) -> tuple[dict[str, NewEvent], list[str]]:
    """The first event of each id in one request, and the ids repeated in it with other
    content (sorted): the request's own conflicts."""
    fresh: dict[str, NewEvent] = {}
    conflicts: set[str] = set()
    for event in events:
        prior = fresh.get(event.event_id)
        if prior is None:
            fresh[event.event_id] = event
        elif not same_content(event, prior.event_type, prior.tenant, prior.body):
            conflicts.add(event.event_id)
    return fresh, sorted(conflicts)
