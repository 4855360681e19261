"""Settings structs read from ``QLEVENTS_*`` environment variables, by msgspec.

A settings struct is a frozen :class:`msgspec.Struct`; each field ``name`` is read from
``QLEVENTS_NAME``. A field whose type is itself a settings struct groups settings that
belong to one part (the event store's) under the same flat variable names. Values are
converted by msgspec (lax mode: ``"8"`` is an int, ``"true"``/``"1"`` a bool); a value that
does not convert raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from qlevents._exceptions import QleventsError

PREFIX: Final = "QLEVENTS_"
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off", ""})
_PATH_IN_ERROR: Final = re.compile(r" - at `\$((?:\.\w+)*)`")

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(QleventsError, ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def variable(name: str) -> str:
    """The environment variable of the field ``name``."""
    return PREFIX + name.upper()


def _raw_values(cls: type[msgspec.Struct], env: Mapping[str, str]) -> dict[str, Any]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    values: dict[str, Any] = {}
    for field in info.fields:
        hint = field.type
        if isinstance(hint, msgspec.inspect.StructType):
            values[field.name] = _raw_values(hint.cls, env)
            continue
        raw = env.get(variable(field.name))
        if raw is None:
            continue
        if isinstance(hint, msgspec.inspect.BoolType):
            word = raw.strip().lower()
            if word in _TRUE | _FALSE:
                raw = "true" if word in _TRUE else "false"
        text_like = isinstance(hint, msgspec.inspect.StrType | msgspec.inspect.LiteralType)
        values[field.name] = raw if text_like else raw.strip()
    return values


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """An instance of ``cls`` with each field read from its ``QLEVENTS_*`` variable, if set."""
    env = os.environ if environ is None else environ
    raw = _raw_values(cls, env)
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        # msgspec names the field by its path ($.storage.synchronous); say the variable.
        found = _PATH_IN_ERROR.search(str(exc))
        detail = _PATH_IN_ERROR.sub("", str(exc))
        name = found.group(1).rsplit(".", 1)[-1] if found else ""
        if name and variable(name) in env:
            raise SettingsError(f"{variable(name)}={env[variable(name)]!r}: {detail}") from None
        raise SettingsError(detail) from None


def to_env(settings: msgspec.Struct) -> dict[str, str]:
    """The ``QLEVENTS_*`` variables that :func:`from_env` reads back as ``settings``."""
    env: dict[str, str] = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if isinstance(value, msgspec.Struct):
            env.update(to_env(value))
        elif isinstance(value, bool):
            env[variable(name)] = "1" if value else "0"
        else:
            env[variable(name)] = str(value)
    return env
