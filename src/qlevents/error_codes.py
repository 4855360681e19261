"""Every per-event error code of ``POST /events``: what it means and how to fix it.

One table, read by the dashboard's Errors page and checked against the API contract
(``docs/api.md``'s table of per-event codes, and the codes the validator and the account
checks emit: ``tests/test_error_codes.py``), so the page and the API cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    meaning: str
    """As docs/api.md says it (the test compares them)."""
    fix: str


ERROR_CODES: Final = {
    e.code: e
    for e in (
        ErrorCode("not_an_object", "the array element is not a JSON object",
                  "Send each event as a JSON object inside the array: [{...}, {...}]."),
        ErrorCode("missing_field", "a required field is absent",
                  "Add the field the message names: client_key, event, price and product_id on"
                  " every event, and permalink on a view."),
        ErrorCode("invalid_type",
                  "wrong JSON type (e.g. `\"12.5\"` for `price`, `2.5` for `units`)",
                  "Send price as a JSON number (12.5, not \"12.5\"), units as a whole number,"
                  " tags and channels as arrays of strings."),
        ErrorCode("empty_value", "an empty string where a non-empty one is required",
                  "Fill in the field (product_id and client_key cannot be \"\")."),
        ErrorCode("too_long", "a string over its length limit",
                  "Shorten the field: product_id and vid 256 characters, tags and channels 128,"
                  " permalink 2048."),
        ErrorCode("out_of_range",
                  "a number outside its range (negative price, `units` 0, a 5000-digit number)",
                  "Send a price from 0 to 1e12 (the total for all units) and units from 1 to"
                  " 1,000,000."),
        ErrorCode("invalid_url", "`permalink` is not an absolute http(s) URL",
                  "Send the product page's full URL, starting with https:// or http://."),
        ErrorCode("too_many_items", "`tags`/`channels` over their item limit; a conversion with 2+"
                  " channels",
                  "Send at most 64 tags and 16 channels, and exactly one channel on a conversion."),
        ErrorCode("unknown_event", "`event` is neither `\"view\"` nor `\"conversion\"`",
                  "Set event to \"view\" (product page) or \"conversion\" (payment confirmation),"
                  " in lower case."),
        ErrorCode("invalid_text", "a string holds an escape that is not Unicode (a lone `\\ud800`)",
                  "Encode text as UTF-8 JSON; do not cut strings in the middle of a character."),
        ErrorCode("invalid_value", "the event breaks a rule no other code names",
                  "Read the message: it quotes the rule. Please report it: it should not happen."),
        ErrorCode("duplicate_field", "`event` is given more than once with different values",
                  "Give event once per event object."),
        ErrorCode("unknown_client_key", "no account has this key",
                  "Copy the client key from Settings > Integration Settings; check you send to"
                  " the endpoint shown there."),
        ErrorCode("expired_client_key", "the key was replaced and its grace period is over",
                  "Use the account's current key, shown in Settings > Integration Settings."),
        ErrorCode("disabled_client_key", "the account is disabled",
                  "Ask your operator to enable the account; its events are refused meanwhile."),
        ErrorCode("wrong_endpoint", "the account is homed on another endpoint; `endpoint` names it",
                  "Send this account's events to the endpoint in the error (and in Settings >"
                  " Integration Settings); events sent here are not stored."),
    )
}  # fmt: skip


def describe(code: str) -> ErrorCode:
    """The code's entry; a code missing from the table still gets a row that says so."""
    return ERROR_CODES.get(code) or ErrorCode(code, "an error code this version does not know", "")
