"""The store a relay runs on: the one its `store.url` names."""

from __future__ import annotations

from typing import Protocol

from relay.domain.config import StoreSection
from relay.store.base import Store
from relay.store.sqlite import SQLiteStore


class RunningStore(Store, Protocol):
    # the latest failure to reach or write the store; None while it works (the relay_store_up gauge)
    last_error: str | None


async def open_store(section: StoreSection, relay_id: str) -> RunningStore:
    """Opened and migrated. PostgreSQL that does not answer yet: a store that refuses every operation (the relay
    answers 503) and connects by itself in `run` as soon as it can. `relay_id`: this relay's name in a store
    several relays share (its mqtt.client_id)."""
    if section.kind == "postgresql":
        # imported only here: psycopg and its pool cost a relay on SQLite 11 MB of memory it never uses
        from relay.store.postgres import PostgresStore

        return await PostgresStore.open(section.url, relay_id=relay_id, lease_s=section.lease_s)
    return await SQLiteStore.open(section.sqlite_path)
