"""The OpenAPI 3.1 document of the service, generated from the wire types.

``openapi.json`` beside this module is what ``GET /openapi.json`` serves; regenerate it with
``python -m qlevents.server.openapi > src/qlevents/server/openapi.json`` (a test fails when
the committed file and this generator disagree).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from qlevents._version import __version__
from qlevents.events import MAX_EVENTS_PER_REQUEST, Event, EventsResponse

_REF = "#/components/schemas/{name}"


def _json(schema_ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=schema_ref)}}}


def _events_answer(description: str, **headers: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json("EventsResponse")}
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}


def build() -> dict[str, Any]:
    (event_schema, _), components = msgspec.json.schema_components(
        [Event, EventsResponse], ref_template=_REF
    )
    components["EventBatch"] = {
        "description": "A JSON array of events, or a single event object (a batch of one).",
        "oneOf": [
            {"type": "array", "items": event_schema, "maxItems": MAX_EVENTS_PER_REQUEST},
            event_schema,
        ],
    }
    components["Account"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "client_key": {"type": "string"},
            "status": {"enum": ["active", "disabled"]},
            "endpoint": {"type": "string", "format": "uri"},
            "created_at": {"type": "string"},
            "rate_limit": {"type": ["number", "null"]},
            "burst": {"type": ["number", "null"]},
        },
        "required": ["name", "client_key", "status", "endpoint", "created_at"],
    }
    components["AdminError"] = {
        "type": "object",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    }
    admin_error = {"description": "Refused.", "content": _json("AdminError")}
    account = {"description": "The account.", "content": _json("Account")}
    key_param = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
    admin_common = {
        "tags": ["admin"],
        "security": [{"adminToken": []}],
    }
    admin_errors = {"401": admin_error, "404": admin_error}
    too_large = {"413": {"description": "The body is over 64 KiB.", "content": _json("AdminError")}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qlevents server-to-server events API",
            "version": __version__,
            "description": (
                "Product view and conversion events sent by shops' backends. Every answer of"
                " POST /events has the shape {processed, failed, errors}; see docs/api.md."
            ),
        },
        "paths": {
            "/events": {
                "post": {
                    "operationId": "postEvents",
                    "summary": "Send one or more events",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": (
                                "Retry safely: the same key (per account) within 24 h returns"
                                " the first answer and stores nothing again."
                            ),
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        },
                        {
                            "name": "dry_run",
                            "in": "query",
                            "required": False,
                            "description": (
                                "true: answer exactly as for a real request (validation, key,"
                                " account status and home endpoint checked) and store nothing;"
                                " the answer carries Dry-Run: true."
                            ),
                            "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": _REF.format(name="EventBatch")}}
                        },
                    },
                    "responses": {
                        "200": _events_answer(
                            "The batch was read; each event is in processed (stored, durable)"
                            " or failed (with its errors)."
                        ),
                        "400": _events_answer(
                            "The body is not JSON, not an array or object; or a bad dry_run."
                        ),
                        "408": _events_answer(
                            "The headers or the body did not arrive in time; the connection"
                            " is closed."
                        ),
                        "413": _events_answer("Over the size or event-count limit."),
                        "415": _events_answer("Unsupported Content-Encoding."),
                        "422": _events_answer("Idempotency-Key reused with a different body."),
                        "429": _events_answer(
                            "Over the account's rate limit.", **{"Retry-After": _RETRY_AFTER}
                        ),
                        "503": _events_answer(
                            "The store cannot take the write, or the server is at capacity;"
                            " nothing was stored.",
                            **{"Retry-After": _RETRY_AFTER},
                        ),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "The store takes writes",
                    "responses": {
                        "200": {"description": "Ready."},
                        "503": {"description": "The store cannot take writes."},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/admin/accounts": {
                "get": {
                    **admin_common,
                    "operationId": "listAccounts",
                    "responses": {
                        "200": {
                            "description": "All accounts.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "accounts": {
                                                "type": "array",
                                                "items": {"$ref": _REF.format(name="Account")},
                                            }
                                        },
                                        "required": ["accounts"],
                                    }
                                }
                            },
                        },
                        "401": admin_error,
                    },
                },
                "post": {
                    **admin_common,
                    "operationId": "addAccount",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string", "minLength": 1},
                                        "endpoint": {"type": "string", "format": "uri"},
                                    },
                                    "required": ["name"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {"description": "Created.", "content": _json("Account")},
                        "400": admin_error,
                        "401": admin_error,
                        **too_large,
                    },
                },
            },
            "/admin/accounts/{key}": {
                "get": {
                    **admin_common,
                    "operationId": "showAccount",
                    "parameters": [key_param],
                    "responses": {"200": account, **admin_errors},
                }
            },
            **{
                f"/admin/accounts/{{key}}/{action}": {
                    "post": {
                        **admin_common,
                        "operationId": f"{action}Account",
                        "parameters": [key_param],
                        "responses": {"200": account, **admin_errors, **too_large},
                    }
                }
                for action in ("disable", "enable")
            },
            "/admin/accounts/{key}/limit": {
                "post": {
                    **admin_common,
                    "operationId": "limitAccount",
                    "parameters": [key_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "rate": {"type": ["number", "null"], "minimum": 0},
                                        "burst": {"type": ["number", "null"], "minimum": 0},
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {"200": account, "400": admin_error, **admin_errors, **too_large},
                }
            },
            "/admin/accounts/{key}/move": {
                "post": {
                    **admin_common,
                    "operationId": "moveAccount",
                    "parameters": [key_param],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"endpoint": {"type": "string", "format": "uri"}},
                                    "required": ["endpoint"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {"200": account, "400": admin_error, **admin_errors, **too_large},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
