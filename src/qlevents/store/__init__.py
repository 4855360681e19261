"""Event stores: the interface and its implementations."""

from qlevents.store.base import EventStore, IdempotencyRecord, Replay
from qlevents.store.memory import MemoryEventStore

__all__ = ["EventStore", "IdempotencyRecord", "MemoryEventStore", "Replay"]
