"""The account book of a cluster: a JetStream key-value bucket every ingest node shares.

The bucket ``<PREFIX>_accounts`` (R3 on three or more servers, on disk, one revision per
key) holds

    account.<id>           an account as JSON (its current key among its fields)
    previous.<client key>  a replaced key and when its grace period ends
    use.<client key>       when the key was last used (Unix time; written at most once a
                           minute per key and node)
    setting.endpoint_url   the installation's public endpoint URL
    user.<email, base64url>  a dashboard user (users_jetstream.py)
    session.<token hash>   a dashboard session: its user, CSRF token and expiry

Each book watches the whole bucket (the snapshot, then every change, ~2 ms after a write)
and answers every read from its copy in memory: a node that loses the cluster keeps
accepting and refusing keys as it did, and only changes fail (StoreUnavailableError: 503).

nats-py is asyncio; the book is called from synchronous code (the CLI, the dashboard's
threads, the server's directory), so it runs its connection on an event loop of its own,
in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from qlevents._exceptions import StoreUnavailableError
from qlevents.accounts import (
    DEFAULT_GRACE_SECONDS,
    Account,
    AccountError,
    AccountNotFoundError,
    PreviousKey,
    Status,
    check_grace,
    check_limit,
    mask_key,
    new_account,
    new_client_key,
    normalize_endpoint,
    working_keys_of,
)
from qlevents.store import jetstream_api as api
from qlevents.store.jetstream_setup import REPLICAS, connect

log: Final = logging.getLogger("qlevents.accounts")

#: Seconds a change waits for the cluster before it fails (503).
WRITE_TIMEOUT: Final = 5.0
#: A key's last use is written again only when it moved on by this much.
USE_WRITE_SECONDS: Final = 60.0
#: Times a change is retried when another node changed the same account meanwhile.
CONFLICT_RETRIES: Final = 5
_ENDPOINT: Final = "setting.endpoint_url"
#: Kinds of entries the book holds for the dashboard's users (users_jetstream.py).
ENTRY_KINDS: Final = ("user", "session")
T = TypeVar("T")


def bucket_name(prefix: str) -> str:
    return f"{prefix}_accounts"


class JetStreamAccountBook:
    """The account book in the JetStream KV bucket of the cluster at ``servers``.

    ``readonly``: for commands that only read; creates no bucket (a missing one reads as an
    empty book). ``open_timeout``: how long to wait for the cluster at start (its leaders
    may still be elected)."""

    poll_seconds: ClassVar[float] = 0.1  # the version is a number in memory
    thread_safe: ClassVar[bool] = True

    def __init__(
        self,
        servers: Sequence[str],
        *,
        prefix: str = "qlevents",
        readonly: bool = False,
        open_timeout: float = 30.0,
    ) -> None:
        self.servers = list(servers)
        self.bucket = bucket_name(prefix)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._previous: dict[str, PreviousKey] = {}
        self._uses: dict[str, float] = {}
        self._settings: dict[str, str] = {}
        # The entries the book keeps for others (users_jetstream.py), by kind, as stored.
        self._entries: dict[str, dict[str, bytes]] = {kind: {} for kind in ENTRY_KINDS}
        self._revisions: dict[str, int] = {}
        self._version = 0
        self._closing = False
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qlevents-account-book", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._open(open_timeout), open_timeout + 5)
        except BaseException:
            self.close()
            raise

    # --- the connection, on the book's own loop ------------------------------------------

    def _run(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise StoreUnavailableError(
                f"the account book on NATS ({','.join(self.servers)}) did not answer in time"
            ) from None

    async def _open(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._nc = await connect(self.servers, deadline, lambda: self._closing)
        js = self._nc.jetstream(timeout=WRITE_TIMEOUT)
        while True:
            try:
                self._kv = await js.key_value(self.bucket)
                break
            except (BucketNotFoundError, NotFoundError):
                if self.readonly:
                    self._kv = None
                    return  # nothing to read: an empty book
                replicas = await self._replicas()
                with contextlib.suppress(NatsError):
                    self._kv = await js.create_key_value(
                        KeyValueConfig(
                            bucket=self.bucket,
                            description="qlevents: the account book (docs/cluster.md)",
                            history=1,
                            replicas=replicas,
                            storage=StorageType.FILE,
                        )
                    )
                    log.info("created the account book %s (R%d)", self.bucket, replicas)
                    break
            except NatsError as exc:
                reason = str(exc) or type(exc).__name__
                if time.monotonic() >= deadline:
                    raise StoreUnavailableError(
                        f"JetStream did not answer in time: {reason}"
                    ) from exc
            await asyncio.sleep(0.25)
            if time.monotonic() >= deadline:
                raise StoreUnavailableError(
                    f"cannot open the account book {self.bucket} on {','.join(self.servers)}"
                )
        ready = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(ready), name="qlevents-account-watch")
        remaining = max(1.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(ready.wait(), remaining)
        except TimeoutError:
            raise StoreUnavailableError(f"the account book {self.bucket} did not load") from None

    async def _replicas(self) -> int:
        assert self._nc is not None
        try:
            facts = await api.ask_servers(self._nc, 2.0)
        except NatsError:
            facts = []
        size = max((fact.cluster_size for fact in facts), default=1)
        return min(REPLICAS, size)

    async def _watch(self, ready: asyncio.Event) -> None:
        """Apply the bucket's snapshot, then every change, for as long as the book is open
        (the watcher resumes by itself after a reconnection)."""
        assert self._kv is not None
        while not self._closing:
            try:
                watcher = await self._kv.watchall()
                while True:
                    try:
                        entry = await watcher.updates(timeout=3600)  # type: ignore[no-untyped-call]
                    except TimeoutError:
                        continue
                    if entry is None:  # the end of the snapshot
                        ready.set()
                        continue
                    self._apply(entry.key, entry.value, entry.revision, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # it reconnects; meanwhile the snapshot stays in use
                log.warning("the account book's watch stopped (%s); starting it again", exc)
                await asyncio.sleep(0.5)

    def _apply(
        self, key: str, value: bytes | None, revision: int | None, operation: str | None
    ) -> None:
        """One entry of the bucket into the copy in memory (a later revision only)."""
        revision = revision or 0
        with self._lock:
            if revision and revision <= self._revisions.get(key, 0):
                return
            self._revisions[key] = revision
            kind, _, name = key.partition(".")
            deleted = operation is not None or not value
            try:
                if kind == "account":
                    if deleted:
                        self._accounts.pop(name, None)
                    else:
                        self._accounts[name] = msgspec.json.decode(value or b"", type=Account)
                elif kind == "previous":
                    if deleted:
                        self._previous.pop(name, None)
                    else:
                        self._previous[name] = msgspec.json.decode(value or b"", type=PreviousKey)
                elif kind == "use" and not deleted:
                    self._uses[name] = max(self._uses.get(name, 0.0), float(value or b"0"))
                elif kind == "setting" and not deleted:
                    self._settings[name] = (value or b"").decode()
                elif kind in self._entries:
                    if deleted:
                        self._entries[kind].pop(name, None)
                    else:
                        self._entries[kind][name] = value or b""
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                log.warning("the account book's entry %s is unreadable (%s); ignored", key, exc)
                return
            self._version += 1

    async def _put(self, key: str, value: bytes, last: int | None) -> int:
        """Write ``key``; ``last``: only over that revision (0: only if the key is new).
        While the bucket's stream has no leader (just created, or electing one) nothing
        answers and nothing is written: sent again until it answers (the caller bounds it)."""
        kv = self._kv
        if kv is None:
            raise AccountError("the account book is read-only here")
        while True:
            try:
                if last is None:
                    return await kv.put(key, value)
                if last == 0:
                    return await kv.create(key, value)
                return await kv.update(key, value, last=last)
            except NoStreamResponseError:
                await asyncio.sleep(0.1)

    def _write(self, key: str, value: bytes, last: int | None = None) -> None:
        """Write one entry to the cluster and into the copy in memory at once (the watch
        brings the same revision again, and ignores it)."""
        if self.readonly:
            raise AccountError("the account book was opened read-only")
        try:
            revision = self._run(_with_timeout(self._put(key, value, last)), WRITE_TIMEOUT + 1)
        except KeyWrongLastSequenceError:
            raise
        except NatsError as exc:
            raise StoreUnavailableError(
                f"the account book on NATS cannot take changes now: {exc or type(exc).__name__}"
            ) from exc
        self._apply(key, value, revision, None)

    def _change_account(self, client_key: str, change: Any) -> Account:
        """Apply ``change`` (Account -> Account) over the revision it read; again if another
        node changed the account meanwhile."""
        for _ in range(CONFLICT_RETRIES):
            account = self.get(client_key)
            key = f"account.{account.id}"
            with self._lock:
                revision = self._revisions.get(key, 0)
            changed: Account = change(account)
            try:
                self._write(key, msgspec.json.encode(changed), revision)
            except KeyWrongLastSequenceError:
                time.sleep(0.05)  # the watch brings the other change
                continue
            return changed
        raise StoreUnavailableError("the account changed under every attempt; try again")

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._closing = True

        async def shut() -> None:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
            # nats-py's own tasks (subscriptions, reconnection) end before the loop does.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    # --- the book ---------------------------------------------------------------------------

    def data_version(self) -> int:
        with self._lock:
            return self._version

    def local_endpoint(self, default: str) -> str:
        with self._lock:
            return self._settings.get("endpoint_url", default)

    def record_local_endpoint(self, url: str) -> None:
        value = normalize_endpoint(url)
        if self.local_endpoint("") != value:
            self._write(_ENDPOINT, value.encode())

    def add(self, name: str, endpoint: str | None = None) -> Account:
        account = new_account(name, endpoint)
        self._write(f"account.{account.id}", msgspec.json.encode(account), 0)
        return account

    def all(self) -> list[Account]:
        with self._lock:
            accounts = list(self._accounts.values())
        return sorted(accounts, key=lambda a: (a.created_at, a.name))

    def get(self, client_key: str) -> Account:
        with self._lock:
            for account in self._accounts.values():
                if account.client_key == client_key:
                    return account
        raise AccountNotFoundError(f"no account has the client key {mask_key(client_key)!r}")

    def get_by_id(self, account_id: str) -> Account:
        with self._lock:
            account = self._accounts.get(account_id)
        if account is None:
            raise AccountError(f"no account has the id {account_id!r}")
        return account

    def set_status(self, client_key: str, status: Status) -> Account:
        return self._change_account(client_key, lambda a: _replace(a, status=status))

    def set_limit(self, client_key: str, rate: float | None, burst: float | None) -> Account:
        check_limit(rate, burst)
        return self._change_account(client_key, lambda a: _replace(a, rate_limit=rate, burst=burst))

    def move(self, client_key: str, endpoint: str, local_endpoint: str) -> Account:
        url = normalize_endpoint(endpoint)
        stored = None if url == normalize_endpoint(local_endpoint) else url
        return self._change_account(client_key, lambda a: _replace(a, endpoint=stored))

    def rotate_key(
        self, client_key: str, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> tuple[Account, PreviousKey]:
        check_grace(grace_seconds)
        account = self.get(client_key)
        now = time.time()
        old = PreviousKey(client_key, account.id, now, now + grace_seconds)
        # The replaced key first: were the account's write to fail, the old key stays the
        # current one (its record says it is replaced, but a current key is never refused
        # while it is in its grace period, and the rotation can be done again).
        self._write(f"previous.{client_key}", msgspec.json.encode(old))
        rotated = self._change_account(
            client_key, lambda a: _replace(a, client_key=new_client_key())
        )
        return rotated, old

    def expire_key(self, client_key: str) -> PreviousKey:
        with self._lock:
            old = self._previous.get(client_key)
        if old is None:
            raise AccountError(f"{mask_key(client_key)!r} is not a replaced key")
        expired = PreviousKey(
            old.client_key, old.account_id, old.replaced_at, min(old.expires_at, time.time())
        )
        self._write(f"previous.{client_key}", msgspec.json.encode(expired))
        return expired

    def previous_keys(self, account_id: str | None = None) -> list[PreviousKey]:
        with self._lock:
            keys = [
                k
                for k in self._previous.values()
                if account_id is None or k.account_id == account_id
            ]
        return sorted(keys, key=lambda k: k.replaced_at, reverse=True)

    def working_keys(self, now: float | None = None) -> dict[str, Account]:
        now = time.time() if now is None else now
        with self._lock:
            accounts, previous = list(self._accounts.values()), list(self._previous.values())
        return working_keys_of(accounts, previous, now)

    def record_key_uses(self, uses: Mapping[str, float]) -> None:
        for key, at in uses.items():
            with self._lock:
                known = self._uses.get(key, 0.0)
            if at >= known + USE_WRITE_SECONDS:
                with contextlib.suppress(StoreUnavailableError):  # a later flush writes it
                    self._write(f"use.{key}", repr(at).encode())

    def key_uses(self, keys: Iterable[str]) -> dict[str, float]:
        with self._lock:
            return {key: self._uses[key] for key in keys if key in self._uses}

    # --- entries kept for others (the dashboard's users and sessions) ----------------------

    def entries(self, kind: str) -> dict[str, bytes]:
        """Every entry ``<kind>.<name>`` of the copy in memory, by name."""
        with self._lock:
            return dict(self._entries[kind])

    def entry(self, kind: str, name: str) -> tuple[bytes, int] | None:
        """An entry of the copy in memory and its revision."""
        key = f"{kind}.{name}"
        with self._lock:
            value = self._entries[kind].get(name)
            return None if value is None else (value, self._revisions.get(key, 0))

    def fetch_entry(self, kind: str, name: str, timeout: float = 0.5) -> bytes | None:
        """An entry read from the cluster now (for one a watch may not have brought yet);
        None if there is none or the cluster does not answer."""
        if self._kv is None:
            return None
        kv = self._kv
        try:
            found = self._run(asyncio.wait_for(kv.get(f"{kind}.{name}"), timeout), timeout + 1)
        except (NatsError, StoreUnavailableError, TimeoutError):
            return None
        if found.value is None:
            return None
        self._apply(found.key, found.value, found.revision, None)
        return found.value

    def put_entry(self, kind: str, name: str, value: bytes, last: int | None = None) -> None:
        """Write an entry; ``last``: only over that revision (0: only if new), else
        :class:`EntryConflictError`."""
        try:
            self._write(f"{kind}.{name}", value, last)
        except KeyWrongLastSequenceError as exc:
            raise EntryConflictError(f"{kind}.{name} changed meanwhile") from exc

    def delete_entry(self, kind: str, name: str) -> None:
        """Delete an entry everywhere (a no-op for one that does not exist)."""
        if self.readonly or self._kv is None:
            raise AccountError("the account book was opened read-only")
        kv = self._kv
        key = f"{kind}.{name}"
        try:
            self._run(_with_timeout(kv.delete(key)), WRITE_TIMEOUT + 1)
        except NatsError as exc:
            raise StoreUnavailableError(
                f"the account book on NATS cannot take changes now: {exc or type(exc).__name__}"
            ) from exc
        with self._lock:
            if self._entries[kind].pop(name, None) is not None:
                self._version += 1


class EntryConflictError(AccountError):
    """An entry was written over a revision it no longer has (another node changed it)."""


def _replace(account: Account, **changes: Any) -> Account:
    return dataclasses.replace(account, **changes)


async def _with_timeout(work: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(work, WRITE_TIMEOUT)
    except TimeoutError:
        raise NatsTimeout from None


class NatsTimeout(NatsError):
    """A change the cluster did not confirm in time (it may still be applied)."""
