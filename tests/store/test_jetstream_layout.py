"""The log's v1 layout: subject tokens, index ranges, and how a request becomes messages."""

from __future__ import annotations

import pytest

from qlevents.events import StoredEvent
from qlevents.store.jetstream_layout import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    INDEX,
    PART,
    PARTS,
    TTL,
    WRITE,
    claim_message,
    decode_event_message,
    event_chunks,
    event_messages,
    events_subject,
    format_indexes,
    parse_indexes,
    record_messages,
    record_subject,
    stream_name,
    token,
    untoken,
    write_messages,
)
from tests.store.events import record, stored


class TestSubjects:
    def test_a_client_key_is_its_own_token(self) -> None:
        """Keys made by `accounts add` (qlk_ + base64url) go into subjects unchanged."""
        assert token("qlk_Ab-9_x") == "qlk_Ab-9_x"
        assert events_subject("qlevents", "qlk_Ab", "view") == "qlevents.v1.events.qlk_Ab.view"

    @pytest.mark.parametrize("value", ["a.b", "*", ">", "with space", "ünï", "~x", ""])
    def test_other_strings_are_encoded_and_decoded_back(self, value: str) -> None:
        """Anything a subject cannot hold becomes one safe token that decodes to itself."""
        encoded = token(value)
        assert encoded.startswith("~")
        assert not set(encoded) & set(".*> \t")
        assert untoken(encoded) == value

    def test_filters_are_wildcards_for_what_is_not_given(self) -> None:
        """A backend reads every event, one account's, or one kind's."""
        assert events_subject("qlevents") == "qlevents.v1.events.>"
        assert events_subject("qlevents", "k1") == "qlevents.v1.events.k1.*"
        assert events_subject("qlevents", kind="conversion") == "qlevents.v1.events.*.conversion"

    def test_a_key_is_hashed_into_its_accounts_subject(self) -> None:
        """Any key string fits a subject; the same key of two accounts are two subjects."""
        one = record_subject("qlevents", "k1", "a key with . and *")
        assert one.startswith("qlevents.v1.idem.k1.") and "*" not in one
        assert record_subject("qlevents", "k2", "a key with . and *") != one

    def test_the_stream_is_named_for_the_prefix(self) -> None:
        """One prefix, one stream; a prefix that cannot start a subject is refused."""
        assert stream_name("qlevents") == "QLEVENTS"
        with pytest.raises(ValueError, match="letters, digits"):
            stream_name("q.events")


class TestIndexes:
    @pytest.mark.parametrize(
        ("indexes", "text"),
        [([0], "0"), ([0, 1, 2, 3, 7], "0-3,7"), ([1, 3, 5], "1,3,5"), ([4, 5, 9, 10], "4-5,9-10")],
    )
    def test_indexes_are_written_as_ranges_and_read_back(
        self, indexes: list[int], text: str
    ) -> None:
        """The Qlevents-Index header stays short for the usual runs of indexes."""
        assert format_indexes(indexes) == text
        assert parse_indexes(text) == indexes


class TestMessages:
    def test_events_go_one_message_per_account_and_kind(self) -> None:
        """Views and conversions of two accounts: four messages, each with its indexes."""
        events = stored(4, "k1") + stored(2, "k2", "b")
        messages = event_messages("qlevents", events, "r1", 1 << 20)
        assert [(m.subject, m.headers[INDEX], m.headers[PART]) for m in messages] == [
            ("qlevents.v1.events.k1.view", "0,2", "0/4"),
            ("qlevents.v1.events.k1.conversion", "1,3", "1/4"),
            ("qlevents.v1.events.k2.view", "4", "2/4"),
            ("qlevents.v1.events.k2.conversion", "5", "3/4"),
        ]
        assert {m.headers[WRITE] for m in messages} == {"r1"}

    def test_a_group_over_the_message_size_is_split(self) -> None:
        """No message holds more than the limit; together they hold every event once."""
        events = [_event(i, "x" * 1000) for i in range(50)]
        messages = event_messages("qlevents", events, "r1", 8000)
        assert len(messages) > 1
        assert all(len(m.payload) <= 8000 for m in messages)
        decoded = [
            decode_event_message(m.subject, 10 + n, m.headers, m.payload)
            for n, m in enumerate(messages)
        ]
        assert [e for d in decoded for e in d.events] == events
        assert [p for d in decoded for p in d.positions] == [(10 << 10) | i for i in range(50)]

    def test_a_write_merges_its_requests_events_per_account_and_kind(self) -> None:
        """Two requests in one write: a message per (account, kind) in the order each first
        appears, indexes counted through the write, events in write order."""
        first = stored(3, "k1")
        second = stored(2, "k2", "b") + stored(2, "k1", "c")
        requests = [
            (len(events), event_chunks("qlevents", events, 1 << 20)) for events in (first, second)
        ]
        messages = write_messages("qlevents", requests, "w1", 1 << 20)
        assert [(m.subject, m.headers[INDEX], m.headers[PART]) for m in messages] == [
            ("qlevents.v1.events.k1.view", "0,2,5", "0/4"),
            ("qlevents.v1.events.k1.conversion", "1,6", "1/4"),
            ("qlevents.v1.events.k2.view", "3", "2/4"),
            ("qlevents.v1.events.k2.conversion", "4", "3/4"),
        ]
        decoded = [
            decode_event_message(m.subject, 10 + n, m.headers, m.payload)
            for n, m in enumerate(messages)
        ]
        found = [pair for d in decoded for pair in zip(d.positions, d.events, strict=True)]
        assert [e for _, e in sorted(found)] == first + second
        assert {d.write_id for d in decoded} == {"w1"}

    def test_requests_of_one_account_and_kind_merge_into_one_run(self) -> None:
        """Three requests of views only: one message whose indexes are one range."""
        requests = [
            (3, event_chunks("qlevents", [_event(3 * r + i, "t") for i in range(3)], 1 << 20))
            for r in range(3)
        ]
        [message] = write_messages("qlevents", requests, "w1", 1 << 20)
        assert message.headers[INDEX] == "0-8"
        decoded = decode_event_message(message.subject, 5, message.headers, message.payload)
        assert [e.id for e in decoded.events] == [f"e{i}" for i in range(9)]

    def test_merged_requests_are_split_where_a_message_would_be_too_big(self) -> None:
        """Requests' chunks are merged only while the message stays under the limit."""
        requests = [
            (10, event_chunks("qlevents", [_event(10 * r + i, "x" * 200) for i in range(10)], 8000))
            for r in range(5)
        ]
        messages = write_messages("qlevents", requests, "w1", 8000)
        assert [m.headers[INDEX] for m in messages] == ["0-19", "20-39", "40-49"]
        assert all(len(m.payload) <= 8000 for m in messages)
        decoded = [
            decode_event_message(m.subject, 10 + n, m.headers, m.payload)
            for n, m in enumerate(messages)
        ]
        assert [e.id for d in decoded for e in d.events] == [f"e{i}" for i in range(50)]
        assert [p for d in decoded for p in d.positions] == [(10 << 10) | i for i in range(50)]

    def test_a_record_claims_the_key_and_spans_what_its_answer_needs(self) -> None:
        """The first message claims the subject (expected sequence 0); all expire in 24 h."""
        messages = record_messages("qlevents", record(response=b"a" * 2500), "r1", 1000)
        assert [len(m.payload) for m in messages] == [1000, 1000, 500]
        first = messages[0]
        assert first.headers[EXPECTED_LAST_SUBJECT_SEQUENCE] == "0"
        assert first.headers[PARTS] == "3"
        assert [m.subject for m in messages[1:]] == [f"{first.subject}.1", f"{first.subject}.2"]
        assert {m.headers[TTL] for m in messages} == {"86400"}

    def test_a_request_without_a_key_claims_its_own_id(self) -> None:
        """The claim is refused if the same request is sent again; it expires soon."""
        claim = claim_message("qlevents", "r1")
        assert claim.subject == "qlevents.v1.claim.r1"
        assert claim.headers[EXPECTED_LAST_SUBJECT_SEQUENCE] == "0"
        assert int(claim.headers[TTL]) < 3600


def _event(i: int, tag: str) -> StoredEvent:
    return StoredEvent(
        id=f"e{i}",
        received_at="2026-11-27T00:00:00.000000Z",
        client_key="k1",
        event="view",
        product_id=f"p{i}",
        price=1.0,
        tags=[tag],
    )
