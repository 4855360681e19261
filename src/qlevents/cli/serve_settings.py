"""The settings ``qlevents serve`` runs with, and where each value came from.

Every setting is a field of :class:`ServeSettings`: where to listen and how to log, then the
server's own :class:`~qlevents.server.config.Settings` (with the groups of the event store and
of the dashboard). Each field gives, by rule, its command-line option (``--max-events``), its
environment variable (``QLEVENTS_MAX_EVENTS``) and its key in the ``--config`` TOML file
(``max_events``), with the field's default: names and defaults cannot drift apart. A value
comes from the first of

    command-line option > environment variable > config file > default

and a value that cannot be used is an error naming it as it was given (the option, the
variable, or the file and key). Imports the server's settings: command modules import this
when a command runs, never at start-up (``qlevents send`` runs without the server).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from qlevents import settings as env_settings
from qlevents.cli.common import config_file, config_option, default_endpoint
from qlevents.cli.errors import CommandError
from qlevents.server.config import Settings
from qlevents.settings import SettingsError


class ServeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What ``qlevents serve`` reads: the listeners and the log, then the server's settings."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8080
    admin_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning"] = "info"
    #: Comma-separated proxy addresses (or "*"); empty: X-Forwarded-For is believed from none.
    forwarded_allow_ips: str = ""
    server: Settings = Settings()


#: Each setting's help text (a test checks that every setting has one, and no other).
HELP: Final = {
    "host": "address to listen on",
    "port": "port to listen on",
    "admin_host": "address of --admin-port",
    "log_level": "log level (warning also turns the access log off)",
    "forwarded_allow_ips": "behind a reverse proxy: its addresses (comma-separated, or '*'),"
    " whose X-Forwarded-For the access log believes",
    "data_dir": "data directory: the event store and the account book",
    "endpoint_url": "this installation's public endpoint URL",
    "max_body_bytes": "largest body after decompression, in bytes; 413 above",
    "max_events": "most events in one request; 413 above",
    "admin_token": "enable the admin API with this bearer token",
    "store": "where events are kept: sqlite, memory (nothing survives a restart), or a NATS"
    " JetStream cluster: nats://HOST:PORT[,nats://HOST:PORT...] (docs/cluster.md)",
    "synchronous": "SQLite durability; nothing weaker is offered",
    "max_pending_events": "events waiting for a commit before the API answers 503",
    "retain_days": "prune events older than this many days, every hour; 0: keep them all",
    "access_log": "one log line per request",
    "access_log_probes": "log the health probes' successful answers too (/healthz, /readyz)",
    "log_file": "write the log to this file instead of standard error; reopened on SIGHUP",
    "header_timeout": "seconds to receive a request's headers",
    "body_timeout": "seconds to receive a request's body",
    "max_inflight_requests": "requests one worker takes at once before answering 503",
    "max_inflight_bytes": "bytes of requests one worker holds at once before answering 503",
    "rate_limit": "default events/s per account, which 'accounts limit' overrides; 0: unlimited",
    "rate_burst": "default burst; 0: one second's worth",
    "workers": "worker processes",
    "admin_port": "serve the admin API on this port only; 0: on --port, with the events API",
    "key_grace_seconds": "dashboard: seconds a rotated key keeps working, unless the rotation"
    " chooses otherwise",
    "live_per_second": "dashboard: live events kept per account per second and worker; above"
    " it, a sample (the others are counted)",
    "live_keep": "dashboard: newest live events kept per account",
    "failed_per_second": "dashboard: failed events kept as sent per account per second and"
    " worker (all are counted)",
    "failed_keep": "dashboard: newest failed events kept per account",
    "failed_days": "dashboard: days failed events are kept",
    "activity_flush_seconds": "dashboard: seconds between two writes of the activity ledger",
    "allow_lazy_fsync": "on a NATS cluster: start even if its servers do not fsync every write"
    " (acknowledged events may be lost in a power failure; docs/cluster.md)",
    "nats_publish_timeout": "on a NATS cluster: seconds one publish waits for the stream",
    "nats_retry_seconds": "on a NATS cluster: seconds an append keeps retrying before 503",
    "nats_max_bytes": "on a NATS cluster: the stream's size limit in bytes; full: 503",
    "nats_prefix": "on a NATS cluster: subjects start with PREFIX.v1, the stream is PREFIX",
    "cluster_nodes": "on a NATS cluster: ingest nodes sharing each account's rate limit"
    " (each enforces limit/N)",
}
#: Defaults that other settings make, as the help shows them.
DERIVED: Final = {"endpoint_url": "http://HOST:PORT/events"}
#: Text settings that must be one of a few words.
CHOICES: Final = {"store": ("sqlite", "memory")}
#: Values a setting of CHOICES may also have: those starting with these.
CHOICE_PREFIXES: Final = {"store": ("nats://", "tls://")}
#: Settings ``config show`` does not print.
SECRET: Final = frozenset({"admin_token"})

DEFAULT: Final = "default"


@dataclass(frozen=True, slots=True)
class Setting:
    """One field of :class:`ServeSettings` (a group's fields are settings of their own)."""

    name: str
    path: tuple[str, ...]
    """Where it is in :class:`ServeSettings`: ``("server", "storage", "store")``."""
    type: msgspec.inspect.Type
    default: Any

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return env_settings.variable(self.name)

    def value_in(self, settings: msgspec.Struct) -> Any:
        value: Any = settings
        for field in self.path:
            value = getattr(value, field)
        return value


def _fields(cls: type[msgspec.Struct], path: tuple[str, ...] = ()) -> Iterator[Setting]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if isinstance(field.type, msgspec.inspect.StructType):
            yield from _fields(field.type.cls, (*path, field.name))
        else:
            yield Setting(field.name, (*path, field.name), field.type, field.default)


SETTINGS: Final = tuple(_fields(ServeSettings))
BY_NAME: Final = {s.name: s for s in SETTINGS}
assert len(BY_NAME) == len(SETTINGS), "two settings share a name (and so a variable)"


def show(value: object) -> str:
    """A value as a TOML file writes it, without a string's quotes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the command-line options ------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one option per setting; each option's default is None (not given),
    and its help shows the setting's default."""
    config_option(parser)
    for setting in SETTINGS:
        kind = setting.type
        shown = DERIVED.get(setting.name) or show(setting.default)
        text = HELP[setting.name] + (f" (default: {shown})" if shown else "")
        options: dict[str, Any] = {"dest": setting.name, "default": None, "help": text}
        if isinstance(kind, msgspec.inspect.BoolType):
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(kind, msgspec.inspect.LiteralType):
            options["choices"] = kind.values
        elif setting.name in CHOICE_PREFIXES:  # a word of CHOICES, or a URL
            options["metavar"] = setting.name.upper()
        elif setting.name in CHOICES:
            options["choices"] = CHOICES[setting.name]
        elif isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            options["type"] = int if isinstance(kind, msgspec.inspect.IntType) else float
            options["metavar"] = "N"
        elif isinstance(kind, msgspec.inspect.StrType | msgspec.inspect.CustomType):
            options["metavar"] = setting.name.rsplit("_", 1)[-1].upper()  # URL, DIR, TOKEN
        else:
            raise TypeError(f"no command-line option for the setting {setting.name} ({kind})")
        parser.add_argument(setting.option, **options)
    parser.epilog = (
        "Each option can also be set by an environment variable (--max-events:"
        " QLEVENTS_MAX_EVENTS) or a key of the --config file (max_events = 1000). An option"
        " wins over a variable, a variable over the file, the file over the default."
        " 'qlevents config show' prints what is in effect and where each value came from."
    )


# --- where the values come from -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective settings, and where each came from."""

    settings: ServeSettings
    sources: dict[str, str]
    """Each setting's source: ``default``, ``file PATH``, ``env QLEVENTS_X`` or ``option --x``."""
    config: tuple[Path, str] | None
    """The config file read, and what named it (``--config`` or ``QLEVENTS_CONFIG``)."""

    def named(self, name: str) -> str:
        """The setting ``name`` as the user gave it: its option, variable or file key."""
        source, setting = self.sources[name], BY_NAME[name]
        if source.startswith("env "):
            return setting.variable
        if source.startswith("file ") and self.config is not None:
            return f"{name} in {self.config[0]}"
        return setting.option


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Resolved:
    """The settings of the options in ``args`` (those it has), the environment, the config
    file and the defaults, in that order of precedence."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(BY_NAME, DEFAULT)
    config = config_file(args, env)
    layers: list[tuple[dict[str, Any], str]] = []
    if config is not None:
        layers.append((read_config(config[0]), f"file {config[0]}"))
    layers.append((_from_env(env), "env {variable}"))
    layers.append((_from_options(args), "option {option}"))
    for layer, source in layers:
        for name, value in layer.items():
            values[name] = value
            setting = BY_NAME[name]
            sources[name] = source.format(variable=setting.variable, option=setting.option)
    settings = _build(values)
    if "endpoint_url" not in values:
        values["endpoint_url"] = default_endpoint(settings.host, settings.port)
        settings = _build(values)
    return Resolved(settings, sources, config)


def read_config(path: Path) -> dict[str, Any]:
    """The settings a TOML file holds (top-level keys named like the settings)."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"the config file {path} is not valid TOML: {exc}") from None
    for key, value in table.items():
        if key not in BY_NAME:
            raise SettingsError(f"{path}: unknown key {key!r}{_did_you_mean(key)}")
        if key in CHOICES and not _chosen(key, value):
            also = "".join(f" or {prefix}HOST:PORT" for prefix in CHOICE_PREFIXES.get(key, ()))
            raise SettingsError(
                f"{path}: {key} = {_toml(value)}: use {' or '.join(map(repr, CHOICES[key]))}{also}"
            )
    try:
        return _convert(table, strict=True)
    except msgspec.ValidationError as exc:
        name, detail = _failed(exc)
        raise SettingsError(f"{path}: {name} = {_toml(table[name])}: {detail}") from None


def _chosen(key: str, value: object) -> bool:
    if value in CHOICES[key]:
        return True
    return isinstance(value, str) and value.startswith(CHOICE_PREFIXES.get(key, ()))


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    given = [s for s in SETTINGS if s.variable in env]
    if not given:
        return {}
    settings = env_settings.from_env(ServeSettings, env)  # errors name the variable
    return {s.name: s.value_in(settings) for s in given}


def _from_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None
    }
    try:
        return _convert(given, strict=True)
    except msgspec.ValidationError as exc:
        name, detail = _failed(exc)
        raise CommandError(f"{BY_NAME[name].option} {given[name]}: {detail}", exit_code=2) from None


def _build(values: dict[str, Any]) -> ServeSettings:
    return msgspec.convert(_nest(values), ServeSettings, dec_hook=_path)


def _convert(values: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    """``values`` converted to their settings' types (msgspec.ValidationError if one cannot)."""
    settings = msgspec.convert(_nest(values), ServeSettings, strict=strict, dec_hook=_path)
    return {name: BY_NAME[name].value_in(settings) for name in values}


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in values.items():
        *groups, field = BY_NAME[name].path
        inner = nested
        for group in groups:
            inner = inner.setdefault(group, {})
        inner[field] = value
    return nested


def _path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError


_AT: Final = re.compile(r" - at `\$((?:\.\w+)*)`$")


def _failed(exc: msgspec.ValidationError) -> tuple[str, str]:
    """The setting a conversion failed on (msgspec says ``$.server.workers``), and why."""
    found = _AT.search(str(exc))
    assert found, str(exc)
    name, detail = found.group(1).rsplit(".", 1)[-1], _AT.sub("", str(exc))
    if name not in BY_NAME:  # a group's own check (the store's): its message names the variable
        named = [x for x in SETTINGS if x.variable + "=" in detail]
        assert named, str(exc)
        name, detail = named[0].name, detail.split(": ", 1)[-1]
    return name, detail


def _toml(value: object) -> str:
    return json.dumps(value) if isinstance(value, str | bool | int | float) else repr(value)


def _did_you_mean(key: str) -> str:
    if key.replace("-", "_") in BY_NAME:
        return f" (keys are written with underscores: {key.replace('-', '_')})"
    close = difflib.get_close_matches(key, BY_NAME, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return "; 'qlevents config show' lists the settings"
