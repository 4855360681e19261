"""``qlevents send FILE``: a backfill from a JSON array or NDJSON file, in batches.

Each event is checked locally first (broken ones are reported, not sent). Each batch is
sent with an Idempotency-Key derived from its body, so re-running the same backfill within
24 hours stores nothing twice.

Ships with the SDK's base install: it imports the SDK downward and, of the command line,
only its error type.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from typing import IO, Any, Final

import msgspec

from qlevents._exceptions import QleventsError, TransportError
from qlevents.cli.errors import CommandError
from qlevents.client._config import ENDPOINT_ENV
from qlevents.events import MAX_EVENTS_PER_REQUEST, ConversionEvent, ViewEvent
from qlevents.validation import convert_event

_decode: Final = msgspec.json.decode
_encode: Final = msgspec.json.Encoder().encode
_AT_BYTE: Final = re.compile(r"\(byte (\d+)\)")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send`` and its options."""
    send = commands.add_parser(
        "send", help="send a file of events (JSON array or NDJSON; - for stdin)"
    )
    send.add_argument(
        "file", metavar="FILE", help="a JSON array or NDJSON file of events; - reads stdin"
    )
    send.add_argument(
        "--endpoint",
        help=f"your qlevents server's events URL, e.g. https://events.example.com/events"
        f" (env {ENDPOINT_ENV}); required: there is no default server",
    )
    send.add_argument(
        "--client-key", help="for events without one (env QLEVENTS_CLIENT_KEY)", default=None
    )
    send.add_argument("--batch-size", type=int, default=500, help="events per request")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    send.add_argument(
        "--retry-budget",
        type=float,
        default=60.0,
        help="seconds to keep retrying one batch before giving up",
    )
    send.set_defaults(handler=run)


def _read(path: str) -> list[tuple[str, Any]]:
    """The file's values, each with where it is: ``line 7`` (NDJSON), ``index 3 at line 12``
    (a JSON array)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data.lstrip().startswith(b"["):
        return _read_array(path, data)
    located = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                located.append((f"line {number}", _decode(line)))
            except msgspec.DecodeError as exc:
                raise CommandError(
                    f"{path} is neither a JSON array nor NDJSON (one event per line):"
                    f" line {number}: {exc}"
                ) from None
    return located


def _read_array(path: str, data: bytes) -> list[tuple[str, Any]]:
    try:
        raws = _decode(data, type=list[msgspec.Raw])
    except msgspec.DecodeError as exc:
        found = _AT_BYTE.search(str(exc))
        line = data.count(b"\n", 0, int(found.group(1))) + 1 if found else 0
        where = f" (line {line})" if line else ""
        raise CommandError(f"{path} is not a valid JSON array: {exc}{where}") from None
    located = []
    cursor = line = 0
    for index, raw in enumerate(raws):
        text = bytes(raw)
        # Between two elements there is only white space and a comma: the first match
        # after the previous element is this one.
        start = data.index(text, cursor)
        line += data.count(b"\n", cursor, start)
        cursor = start + len(text)
        located.append((f"index {index} at line {line + 1}", _decode(text)))
        line += text.count(b"\n")
    return located


class _Progress:
    """A progress bar on stderr when it is a terminal; silence otherwise."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()

    def show(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        width = 30
        filled = width * done // self.total
        rate = done / max(time.monotonic() - self.started, 1e-6)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} events {rate:,.0f}/s"
        )
        self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Check the file's events, send the valid ones in batches, print a summary."""
    from qlevents.client import Client  # only here: every command's start-up would pay
    from qlevents.client._build import body

    if not 1 <= args.batch_size <= MAX_EVENTS_PER_REQUEST:
        raise CommandError(f"--batch-size must be from 1 to {MAX_EVENTS_PER_REQUEST}", exit_code=2)
    endpoint = args.endpoint or os.environ.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        raise CommandError(
            f"no endpoint: give --endpoint URL or set {ENDPOINT_ENV} (your qlevents server's"
            " events URL, e.g. https://events.example.com/events); qlevents send has no"
            " default server",
            exit_code=2,
        )
    key = args.client_key or os.environ.get("QLEVENTS_CLIENT_KEY") or ""
    given = _read(args.file)
    failures = _Failures()
    valid: list[ViewEvent | ConversionEvent] = []
    places: list[str] = []  # where each valid event is in the file
    for where, event in given:
        if isinstance(event, dict) and "client_key" not in event and key:
            event = {"client_key": key, **event}  # noqa: PLW2901
        checked = convert_event(event) if isinstance(event, dict) else None
        if checked is None:
            failures.add("not_an_object", where, "an event must be a JSON object")
        elif isinstance(checked, list):
            failures.add(checked[0].code, where, checked[0].message)
        else:
            valid.append(checked)
            places.append(where)
    processed = requests = answered = 0
    failed = len(failures)
    progress = _Progress(len(given), sys.stderr)
    progress.show(failed)
    try:
        client = Client(
            key or "backfill",
            endpoint,
            timeout=args.timeout,
            send_retry_budget=args.retry_budget,
        )
    except QleventsError as exc:
        raise CommandError(str(exc), exit_code=2) from exc
    try:
        for start in range(0, len(valid), args.batch_size):
            chunk = valid[start : start + args.batch_size]
            digest = hashlib.blake2b(body([_encode(e) for e in chunk]), digest_size=16)
            try:
                result = client.send(chunk, idempotency_key=f"qlevents-send-{digest.hexdigest()}")
            except TransportError as exc:
                progress.end()
                _summary(processed, failed, requests, failures)
                raise CommandError(
                    f"{exc}; {len(valid) - answered} events were not sent. Re-run the same"
                    " command: what was stored already is not stored twice."
                ) from exc
            requests += 1
            answered += len(chunk)
            processed += len(result.processed)
            failed += len(result.failed)
            seen: set[int | None] = set()
            for error in result.errors:  # an event's first problem names why it failed
                if error.index in seen:
                    continue
                seen.add(error.index)
                indexes = range(len(chunk)) if error.index is None else [error.index]
                for index in indexes:
                    failures.add(error.code, places[start + index], error.message)
            progress.show(processed + failed)
    finally:
        client.close()
    progress.end()
    _summary(processed, failed, requests, failures)
    return 0 if not failed else 1


class _Failures:
    """Failed events by the code of their first problem: where each is, one message each."""

    #: Places listed after a code's example.
    SHOWN: Final = 5

    def __init__(self) -> None:
        self.places: dict[str, list[str]] = {}
        self.examples: dict[str, str] = {}

    def add(self, code: str, where: str, message: str) -> None:
        self.places.setdefault(code, []).append(where)
        self.examples.setdefault(code, f"{where}: {message}")

    def __len__(self) -> int:
        return sum(len(places) for places in self.places.values())

    def lines(self) -> list[str]:
        """One line per code, most frequent first: the count, the first example, where else."""
        lines = []
        for code, places in sorted(self.places.items(), key=lambda item: -len(item[1])):
            line = f"  {len(places):>8}  {code}: {self.examples[code]}"
            also = places[1 : 1 + self.SHOWN]
            if also:
                more = len(places) - 1 - len(also)
                line += f" (also {', '.join(also)}{f' and {more:,} more' if more else ''})"
            lines.append(line)
        return lines


def _summary(processed: int, failed: int, requests: int, failures: _Failures) -> None:
    plural = "" if requests == 1 else "s"
    print(f"{processed} processed, {failed} failed ({requests} request{plural}).")
    for line in failures.lines():
        print(line)
