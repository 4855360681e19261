"""The table of error codes agrees with the API contract and with the codes the code emits."""

from __future__ import annotations

import re
from pathlib import Path

from qlevents import validation
from qlevents.error_codes import ERROR_CODES

API_DOC = Path(__file__).parent.parent / "docs" / "api.md"


def _documented() -> dict[str, str]:
    text = API_DOC.read_text()
    section = text.split("### Per-event error codes", 1)[1].split("###", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE))


def test_every_documented_code_has_the_same_meaning_in_the_table() -> None:
    """docs/api.md's per-event codes and the dashboard's table say the same."""
    documented = _documented()
    assert documented
    assert {code: ERROR_CODES[code].meaning for code in documented} == documented
    assert set(ERROR_CODES) == set(documented)


def test_every_code_the_validator_emits_is_in_the_table() -> None:
    """Each code constant of qlevents.validation has a meaning and a fix."""
    codes = {
        value for name, value in vars(validation).items()
        if name.isupper() and isinstance(value, str) and value.islower() and "_" in value
    }  # fmt: skip
    assert codes <= set(ERROR_CODES)
    assert all(ERROR_CODES[code].fix for code in codes)
