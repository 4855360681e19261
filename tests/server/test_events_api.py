"""POST /events: the spec's examples and the response contract, against a real server."""

from __future__ import annotations

from tests.support import RunningServer, conversion, view


class TestSpecExamples:
    def test_single_view_is_processed_and_stored(self, server: RunningServer) -> None:
        """The spec's product-page curl example is processed and lands in the store."""
        key = server.client_key
        answer = server.post([view(key)])
        assert answer.status_code == 200
        body = answer.json()
        assert body["failed"] == [] and body["errors"] == []
        [event] = body["processed"]
        assert event["product_id"] == "123-AA-X23" and event["price"] == 123.41
        assert event["id"] and event["received_at"].endswith("Z")
        assert server.stored() == body["processed"]

    def test_form_encoded_content_type_is_parsed_as_json(self, server: RunningServer) -> None:
        """curl -d sends application/x-www-form-urlencoded; the body is JSON all the same."""
        key = server.client_key
        body = f'[{{"client_key": "{key}", "price": 60, "product_id": "p", "event": "conversion"}}]'
        answer = server.post(
            body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert answer.status_code == 200
        assert len(answer.json()["processed"]) == 1

    def test_two_conversions_with_units(self, server: RunningServer) -> None:
        """The payment-page example: two conversions, the second with units 3, price as float."""
        key = server.client_key
        answer = server.post([conversion(key, price=123.41, units=None), conversion(key)])
        processed = answer.json()["processed"]
        assert [e["units"] for e in processed] == [None, 3]
        assert processed[1]["price"] == 60.0
        assert len(server.stored(key)) == 2
