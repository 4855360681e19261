"""Schemathesis against the served /openapi.json: for requests generated from the document,
no 5xx, and every answer's status, content type, headers and body match the document.

It runs against the session's shared server: the accounts it changes are ones it made, or
keys nobody holds.

A short run (25 examples per operation and mode); reliability/schemathesis_run.py runs every
phase at 1000.

Checks left out, and why:
* ``negative_data_rejection`` / ``positive_data_acceptance``: POST /events deliberately
  answers 200 for events that break the schema (they come back in ``failed`` with their
  errors, the spec's contract), so "schema-invalid input is rejected with 4xx" does not hold
  by design; the per-event outcome is checked by tests/server/test_properties.py instead.
* ``unsupported_method``, ``ignored_auth``, ``use_after_free``, ...: other concerns, covered
  by tests/server/test_events_api.py and test_admin_api.py.

Cases are drawn from each operation's strategy with hypothesis directly rather than with
``schemathesis.pytest.from_fixture``, which fails on pytest 9 (it sets ``node._nodeid``).
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import ADMIN_TOKEN, RunningServer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
AUTHORIZATION = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(shared_server: RunningServer) -> schemathesis.BaseSchema:
    """The document as the server serves it."""
    return schemathesis.openapi.from_url(f"{shared_server.url}/openapi.json")


EXISTING = "positive-existing-account"


def operations() -> list[tuple[str, str]]:
    """Every operation of the committed document (the served one is checked equal to it in
    tests/server/test_operations.py): positive; negative where it has inputs to break; and,
    where the path names an account, positive with a key that exists (else all are 404s)."""
    document = json.loads((resources.files("qlevents.server") / "openapi.json").read_text())
    cases = []
    for path, methods in document["paths"].items():
        for operation in methods.values():
            cases.append((operation["operationId"], GenerationMode.POSITIVE.value))
            if "parameters" in operation or "requestBody" in operation:
                cases.append((operation["operationId"], GenerationMode.NEGATIVE.value))
            if "{key}" in path:
                cases.append((operation["operationId"], EXISTING))
    return cases


class TestServedDocument:
    @pytest.mark.parametrize(("operation_id", "mode"), operations())
    def test_answers_conform_to_the_document(
        self,
        api_schema: schemathesis.BaseSchema,
        shared_server: RunningServer,
        operation_id: str,
        mode: str,
    ) -> None:
        """Generated requests (valid, and invalid by the document) get no 5xx, and answers
        whose status, content type, headers and body match the served document."""
        operation = api_schema.find_operation_by_id(operation_id)  # type: ignore[attr-defined]
        if mode == EXISTING:
            key = shared_server.create_account(f"schemathesis-{operation_id}")
            strategy = operation.as_strategy(path_parameters={"key": key})
        else:
            strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
            ],
            database=None,
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=shared_server.url,
                headers=AUTHORIZATION,
                checks=CHECKS,
                timeout=30,
            )

        check()
