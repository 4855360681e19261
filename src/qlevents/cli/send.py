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
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any, Final

import msgspec

from qlevents._exceptions import QleventsError, TransportError
from qlevents.cli.errors import CommandError
from qlevents.client import DEFAULT_ENDPOINT, Client
from qlevents.client._build import body
from qlevents.events import MAX_EVENTS_PER_REQUEST, ConversionEvent, ViewEvent
from qlevents.validation import convert_event

_decode: Final = msgspec.json.decode
_encode: Final = msgspec.json.Encoder().encode


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
        help=f"the events API URL (env QLEVENTS_ENDPOINT; default: {DEFAULT_ENDPOINT})",
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


def _read(path: str) -> list[Any]:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    text = data.lstrip()
    try:
        if text.startswith(b"["):
            events = _decode(text)
            assert isinstance(events, list)
            return events
        return [_decode(line) for line in data.splitlines() if line.strip()]
    except msgspec.DecodeError as exc:
        raise CommandError(
            f"{path} is neither a JSON array nor NDJSON (one event per line): {exc}"
        ) from None


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


def _chunks(
    events: list[ViewEvent | ConversionEvent], size: int
) -> Iterator[list[ViewEvent | ConversionEvent]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def run(args: argparse.Namespace) -> int:
    """Check the file's events, send the valid ones in batches, print a summary."""
    if not 1 <= args.batch_size <= MAX_EVENTS_PER_REQUEST:
        raise CommandError(f"--batch-size must be from 1 to {MAX_EVENTS_PER_REQUEST}", exit_code=2)
    endpoint = args.endpoint or os.environ.get("QLEVENTS_ENDPOINT") or DEFAULT_ENDPOINT
    key = args.client_key or os.environ.get("QLEVENTS_CLIENT_KEY") or ""
    given = _read(args.file)
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    valid: list[ViewEvent | ConversionEvent] = []
    for index, event in enumerate(given):
        if isinstance(event, dict) and "client_key" not in event and key:
            event = {"client_key": key, **event}  # noqa: PLW2901
        checked = convert_event(event) if isinstance(event, dict) else None
        if checked is None or isinstance(checked, list):
            problems = checked or []
            code = problems[0].code if problems else "not_an_object"
            reasons[code] += 1
            examples.setdefault(
                code, f"event {index}: {problems[0].message}" if problems else f"event {index}"
            )
            continue
        valid.append(checked)
    processed = failed = requests = answered = 0
    failed += sum(reasons.values())
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
        for chunk in _chunks(valid, args.batch_size):
            digest = hashlib.blake2b(body([_encode(e) for e in chunk]), digest_size=16)
            try:
                result = client.send(chunk, idempotency_key=f"qlevents-send-{digest.hexdigest()}")
            except TransportError as exc:
                progress.end()
                _summary(processed, failed, requests, reasons, examples)
                raise CommandError(
                    f"{exc}; {len(valid) - answered} events were not sent. Re-run the same"
                    " command: what was stored already is not stored twice."
                ) from exc
            requests += 1
            answered += len(chunk)
            processed += len(result.processed)
            failed += len(result.failed)
            seen: set[int | None] = set()
            for error in result.errors:
                if error.index in seen:
                    continue
                seen.add(error.index)
                reasons[error.code] += 1 if error.index is not None else len(chunk)
                examples.setdefault(error.code, error.message)
            progress.show(processed + failed)
    finally:
        client.close()
    progress.end()
    _summary(processed, failed, requests, reasons, examples)
    return 0 if not failed else 1


def _summary(
    processed: int, failed: int, requests: int, reasons: Counter[str], examples: dict[str, str]
) -> None:
    plural = "" if requests == 1 else "s"
    print(f"{processed} processed, {failed} failed ({requests} request{plural}).")
    for code, count in reasons.most_common():
        print(f"  {count:>8}  {code}: {examples.get(code, '')}")
