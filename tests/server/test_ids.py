"""Event ids: UUIDv7, unique, in request order, and never shared with a forked child."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from qlevents.server import ids

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_ids_are_uuid7_unique_and_ordered() -> None:
    """Thousands of requests' ids (past several refills of the random pool): all valid
    UUIDv7, no two alike, and one request's ids in index order."""
    seen: set[str] = set()
    for _ in range(3000):
        batch = ids.new_event_ids(5)
        assert batch == sorted(batch)
        for event_id in batch:
            assert UUID7.match(event_id), event_id
            assert uuid.UUID(event_id).version == 7
        seen.update(batch)
    assert len(seen) == 3000 * 5


def test_a_call_past_the_ready_made_suffixes_numbers_on_in_order() -> None:
    """The suffixes of the first 1024 ids are ready-made; the rest (up to 65536) are the same
    four hex digits of the index, and no more than that is asked."""
    batch = ids.new_event_ids(ids.MAX_IDS)
    assert [event_id[-4:] for event_id in batch] == [f"{i:04x}" for i in range(ids.MAX_IDS)]
    assert batch == sorted(batch) and all(UUID7.match(event_id) for event_id in batch[1020:1030])
    with pytest.raises(ValueError, match="at most 65536"):
        ids.new_event_ids(ids.MAX_IDS + 1)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    """The random pool is dropped in a forked child, so parent and child draw apart."""
    ids.new_event_ids(1)  # the pool now holds bytes the parent has not used yet
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write_end, " ".join(ids.new_event_ids(1)[0] for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [ids.new_event_ids(1)[0] for _ in range(50)]
    assert len(child) == 50
    # Ids differ in their time too: compare the random part only.
    assert not {i[-17:] for i in child} & {i[-17:] for i in parent}
