"""The JetStream API calls the cluster store makes itself: an atomic batch publish, a
message get and a stream's cluster state, decoded by msgspec (nats-py's manager decodes far
more than these need, and has no atomic batch publish)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from qlevents.store.jetstream_layout import Outgoing

#: JetStream's error codes (server/errors.json) that the store tells apart.
NO_MESSAGE: Final = 10037
WRONG_LAST_SEQUENCE: Final = 10071  # the subject already holds a message: a claimed key
WRONG_LAST_SEQUENCE_IN_FLIGHT: Final = 10164  # a message for it is being stored
STORE_FAILED: Final = 10077  # "maximum bytes exceeded" on a full stream, or a disk error
STORAGE_EXCEEDED: Final = 10047
INSUFFICIENT_RESOURCES: Final = 10023
REPLICAS_NOT_SUPPORTED: Final = 10074  # R3 asked of a server that is not in a cluster


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class JetStreamApiError(Exception):
    """JetStream answered a request with an error."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(f"{error.description} (error {error.err_code})")
        self.error = error


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    count: int = 0
    error: ApiError | None = None


class StoredMessage(msgspec.Struct):
    subject: str
    seq: int
    data: bytes = b""
    hdrs: bytes | None = None

    @property
    def headers(self) -> dict[str, str]:
        return parse_headers(self.hdrs)


class _MessageReply(msgspec.Struct):
    message: StoredMessage | None = None
    error: ApiError | None = None


class PeerInfo(msgspec.Struct):
    name: str = ""
    current: bool = False
    offline: bool = False
    #: Nanoseconds since the leader last heard from this replica.
    active: int = 0


class ClusterInfo(msgspec.Struct):
    leader: str | None = None
    replicas: list[PeerInfo] = []


class StreamConfig(msgspec.Struct):
    num_replicas: int = 1


class StreamInfo(msgspec.Struct):
    config: StreamConfig = msgspec.field(default_factory=StreamConfig)
    cluster: ClusterInfo | None = None
    error: ApiError | None = None


_PUB_ACK: Final = msgspec.json.Decoder(PubAck)
_MESSAGE_REPLY: Final = msgspec.json.Decoder(_MessageReply)
_STREAM_INFO: Final = msgspec.json.Decoder(StreamInfo)
_ENCODER: Final = msgspec.json.Encoder()


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """Headers in NATS's wire form (``NATS/1.0\\r\\nName: value\\r\\n...``) as a dict."""
    headers: dict[str, str] = {}
    if not raw:
        return headers
    for line in raw.decode().split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


async def publish_batch(nc: Client, messages: Sequence[Outgoing], timeout: float) -> PubAck:
    """Publish ``messages`` as one atomic batch: all are stored, or none. Every message but
    the last goes without waiting; the last commits the batch and brings the answer.

    Raises nats' TimeoutError when the answer does not come in ``timeout`` seconds (the
    batch may still be stored) and NoRespondersError when no stream took the commit."""
    batch_id = uuid.uuid4().hex
    last = len(messages)
    for number, message in enumerate(messages[:-1], start=1):
        headers = {
            **message.headers,
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": str(number),
        }
        await nc.publish(message.subject, message.payload, headers=headers)
    final = messages[-1]
    headers = {
        **final.headers,
        "Nats-Batch-Id": batch_id,
        "Nats-Batch-Sequence": str(last),
        "Nats-Batch-Commit": "1",
    }
    reply = await nc.request(final.subject, final.payload, timeout=timeout, headers=headers)
    return _PUB_ACK.decode(reply.data)


async def get_message(
    nc: Client, stream: str, request: dict[str, Any], timeout: float
) -> StoredMessage | None:
    """The message ``request`` names (``{"last_by_subj": ...}``, or ``{"seq": ...,
    "next_by_subj": ...}``), answered by the stream's leader; None if there is none."""
    reply = await nc.request(
        f"$JS.API.STREAM.MSG.GET.{stream}", _ENCODER.encode(request), timeout=timeout
    )
    answer = _MESSAGE_REPLY.decode(reply.data)
    if answer.error is not None:
        if answer.error.err_code == NO_MESSAGE:
            return None
        raise JetStreamApiError(answer.error)
    return answer.message


async def purge(nc: Client, stream: str, subject: str, keep_from: int, timeout: float) -> int:
    """Remove the messages of ``subject`` before sequence ``keep_from``; how many went."""
    reply = await nc.request(
        f"$JS.API.STREAM.PURGE.{stream}",
        _ENCODER.encode({"filter": subject, "seq": keep_from}),
        timeout=timeout,
    )
    answer = msgspec.json.decode(reply.data)
    if "error" in answer:
        raise JetStreamApiError(msgspec.convert(answer["error"], ApiError))
    return int(answer.get("purged", 0))


async def stream_info(nc: Client, stream: str, timeout: float) -> StreamInfo:
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
    info = _STREAM_INFO.decode(reply.data)
    if info.error is not None:
        raise JetStreamApiError(info.error)
    return info


#: Where the shipped configuration imports the system account's VARZ request
#: ($SYS.REQ.SERVER.PING.VARZ): every server of the cluster answers it.
VARZ_SUBJECT: Final = "qlevents.sys.varz"
#: JetStream's atomic batch limit when the configuration does not set one.
DEFAULT_BATCH_MESSAGES: Final = 1000


class _JetStreamConfig(msgspec.Struct):
    sync_always: bool = False


class _JetStreamLimits(msgspec.Struct):
    max_batch_size: int = 0


class _JetStreamMeta(msgspec.Struct):
    cluster_size: int = 1


class _JetStreamVarz(msgspec.Struct):
    config: _JetStreamConfig | None = None
    limits: _JetStreamLimits | None = None
    meta: _JetStreamMeta | None = None


class _Varz(msgspec.Struct):
    server_name: str = ""
    max_payload: int = 0
    jetstream: _JetStreamVarz | None = None


class _VarzReply(msgspec.Struct):
    data: _Varz | None = None


_VARZ_REPLY: Final = msgspec.json.Decoder(_VarzReply)


class ServerFacts(msgspec.Struct, frozen=True):
    """What one NATS server says of itself in its /varz."""

    name: str
    sync_always: bool
    cluster_size: int
    max_batch_messages: int
    max_payload: int


async def ask_servers(nc: Client, timeout: float) -> list[ServerFacts]:
    """The /varz of every server that answers within ``timeout`` seconds (it stops waiting
    once the whole cluster has). Raises NoRespondersError when the servers do not offer
    :data:`VARZ_SUBJECT` (a configuration without the shipped import)."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    facts: list[ServerFacts] = []
    try:
        await nc.publish(VARZ_SUBJECT, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        expected = 0
        while not expected or len(facts) < expected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await subscription.next_msg(timeout=remaining)
            except TimeoutError:
                break
            if msg.headers and msg.headers.get("Status") == "503":
                raise NoRespondersError
            varz = _VARZ_REPLY.decode(msg.data).data
            if varz is None:
                continue
            jetstream = varz.jetstream or _JetStreamVarz()
            size = jetstream.meta.cluster_size if jetstream.meta else 1
            batch = jetstream.limits.max_batch_size if jetstream.limits else 0
            facts.append(
                ServerFacts(
                    name=varz.server_name,
                    sync_always=bool(jetstream.config and jetstream.config.sync_always),
                    cluster_size=size,
                    max_batch_messages=batch or DEFAULT_BATCH_MESSAGES,
                    max_payload=varz.max_payload,
                )
            )
            expected = max(expected, size)
    finally:
        await subscription.unsubscribe()
    return facts
