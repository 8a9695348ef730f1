"""PostgreSQL schema, as forward migrations. Append a step; never edit one that has shipped.

Each migration is a list of statements, each run on its own (never a script split on `;`), all of one migration in
one transaction with the version row. The first relay that starts migrates; a transaction-scoped advisory lock
makes any other relay starting at the same moment wait, then find the work done.

Times are epoch seconds as `double precision`, as the relay's clock gives them (an injected clock in tests), so
what is stored reads back equal. The report is kept as the text it was submitted as. A column added later comes
with `ALTER TABLE ... ADD COLUMN` without a default, which PostgreSQL does without rewriting a table.
"""

from __future__ import annotations

import time

import psycopg
from psycopg.rows import TupleRow

OPEN_SQL = "('pending', 'delivered')"
ORIGIN_SETTING = "uav_relay.origin"  # each connection of a relay sets it to the relay's id (see alert_changes)
CHANGES_CHANNEL = "uav_relay_changes"  # NOTIFY: a change was committed; wakes the other relays' readers

# Every index here is written at each report's commit: an index earns its place only if a query on the hot path or
# the API needs it (tests/test_store_postgres.py asks the planner for every statement the engine's work issues).
MIGRATIONS: list[list[str]] = [
    # 1: everything SQLite's migrations 1-6 built (the spine, SMS opt-outs, the audit trail, hardening, tracks)
    [
        """
        CREATE TABLE alerts (
            alert_id        text PRIMARY KEY,   -- monotonic ULID: its order is the order of acceptance
            operator_id     text NOT NULL,
            report_id       text NOT NULL,
            content_sha256  text NOT NULL,
            report_json     text NOT NULL,      -- as submitted (not jsonb: that would reorder its keys)
            desks_json      text NOT NULL,
            short_code      text NOT NULL,
            priority        text NOT NULL,
            stale           boolean NOT NULL,
            state           text NOT NULL,
            source          text NOT NULL,
            created_at      double precision NOT NULL,
            next_action_at  double precision,
            backup_rounds   integer NOT NULL DEFAULT 0,
            last_backup_at  double precision,
            closed_at       double precision,
            track_id        text NOT NULL,
            UNIQUE (operator_id, report_id)
        )
        """,
        f"CREATE UNIQUE INDEX alerts_open_short_code ON alerts (short_code) WHERE state IN {OPEN_SQL}",
        "CREATE INDEX alerts_due ON alerts (next_action_at) WHERE next_action_at IS NOT NULL",
        "CREATE INDEX alerts_given_up_code ON alerts (short_code, closed_at) WHERE state = 'unacknowledged'",
        "CREATE INDEX alerts_track ON alerts (track_id, alert_id)",
        """
        CREATE TABLE alert_desks (
            desk_id   text NOT NULL,
            alert_id  text NOT NULL,
            PRIMARY KEY (desk_id, alert_id)
        )
        """,
        """
        CREATE TABLE deliveries (
            delivery_id  text PRIMARY KEY,
            alert_id     text NOT NULL,
            desk_id      text NOT NULL,
            channel      text NOT NULL,
            target       text NOT NULL,
            state        text NOT NULL,
            attempts     integer NOT NULL DEFAULT 0,
            sent_at      double precision,
            delivered_at double precision,
            error        text,
            permanent    boolean NOT NULL DEFAULT false,
            attempted_at double precision,
            updated_at   double precision NOT NULL
        )
        """,
        "CREATE INDEX deliveries_alert ON deliveries (alert_id)",
        "CREATE INDEX deliveries_queued ON deliveries (channel, alert_id) WHERE state = 'queued'",
        # a restart's look for sends that may not have gone out: only the few rows marked sending are in it
        "CREATE INDEX deliveries_sending ON deliveries (alert_id) WHERE state = 'sending'",
        """
        CREATE TABLE acks (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alert_id   text NOT NULL,
            desk_id    text NOT NULL,
            channel    text NOT NULL,
            by         text NOT NULL,
            at         double precision NOT NULL,
            latency_s  double precision NOT NULL,
            first      boolean NOT NULL,
            source     text NOT NULL DEFAULT '',
            via_track  boolean NOT NULL DEFAULT false
        )
        """,
        "CREATE INDEX acks_alert ON acks (alert_id, id)",
        # one first ack per alert, whichever connection (later: whichever relay) records it
        "CREATE UNIQUE INDEX acks_first ON acks (alert_id) WHERE first",
        """
        CREATE TABLE events (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alert_id    text NOT NULL,
            at          double precision NOT NULL,
            kind        text NOT NULL,
            detail_json text NOT NULL
        )
        """,
        "CREATE INDEX events_alert ON events (alert_id, id)",
        "CREATE INDEX events_kind ON events (kind, id)",
        "CREATE INDEX events_at ON events (at)",
        "CREATE TABLE heartbeat (id integer PRIMARY KEY CHECK (id = 1), at double precision NOT NULL)",
        "INSERT INTO heartbeat VALUES (1, 0)",
        "CREATE TABLE sms_opt_outs (phone text PRIMARY KEY, at double precision NOT NULL)",
        # failed authentication: one row per (kind, endpoint, source address, hour) with a count
        """
        CREATE TABLE auth_failures (
            kind      text NOT NULL,
            endpoint  text NOT NULL,
            source    text NOT NULL,
            bucket    double precision NOT NULL,   -- start of the hour the failures fell in
            count     integer NOT NULL,
            first_at  double precision NOT NULL,
            last_at   double precision NOT NULL,
            reason    text NOT NULL,
            PRIMARY KEY (kind, endpoint, source, bucket)
        )
        """,
        "CREATE INDEX auth_failures_last ON auth_failures (last_at)",
        """
        CREATE TABLE inbound_messages (
            channel     text NOT NULL,
            message_id  text NOT NULL,
            at          double precision NOT NULL,
            PRIMARY KEY (channel, message_id)
        )
        """,
        "CREATE INDEX inbound_messages_at ON inbound_messages (at)",
        """
        CREATE TABLE tracks (
            track_id       text PRIMARY KEY,
            estimate_json  text NOT NULL,
            opened_at      double precision NOT NULL,
            last_seen      double precision NOT NULL,  -- the estimate's latest observed_at: which a report may join
            updated_at     double precision NOT NULL,  -- latest activity: the order of GET /api/v1/tracks
            acks           jsonb NOT NULL DEFAULT '{}',  -- each desk's first ack of it (covering its later alerts)
            merged_into    text                        -- a dispatcher merged it into that track
        )
        """,
        "CREATE INDEX tracks_last_seen ON tracks (last_seen)",
        "CREATE INDEX tracks_updated ON tracks (updated_at)",
    ],
    # 2: several relays on one database (CONTRACT.md, "More than one relay")
    [
        # Each relay's lease: its claims hold while `lease_until` is ahead (it renews every lease_s / 4); when it
        # dies they lapse, and any other relay takes its timers and unfinished sends. One row per relay: renewing
        # is one write, however many alerts the relay holds.
        """
        CREATE TABLE relays (
            relay_id     text PRIMARY KEY,           -- its mqtt.client_id
            instance     text NOT NULL,              -- the process: two processes with one id are told apart
            started_at   double precision NOT NULL,
            lease_until  double precision NOT NULL
        )
        """,
        # The relay that accepted or last stepped an alert holds its timers and unfinished sends while its lease
        # lives; NULL: no relay (rows from before this step).
        "ALTER TABLE alerts ADD COLUMN claimed_by text",
        # Every change of an alert's state or track, in commit order of its sequence, written by the trigger below
        # in the change's own transaction (a NOTIFY alone is lost while a relay is not listening); each relay
        # reads those of the others and tells its operators. `origin` is the writing relay's session setting.
        """
        CREATE TABLE alert_changes (
            seq       bigserial PRIMARY KEY,
            alert_id  text NOT NULL,
            origin    text NOT NULL,
            at        double precision NOT NULL
        )
        """,
        f"""
        CREATE FUNCTION relay_alert_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO alert_changes (alert_id, origin, at)
            VALUES (NEW.alert_id, coalesce(current_setting('{ORIGIN_SETTING}', true), ''),
                    extract(epoch FROM clock_timestamp()));
            -- the payload names the relay that made it: that one has nothing to read (one NOTIFY per transaction)
            PERFORM pg_notify('{CHANGES_CHANNEL}', coalesce(current_setting('{ORIGIN_SETTING}', true), ''));
            RETURN NULL;
        END
        $$
        """,  # noqa: S608 - two constants of this module
        "CREATE TRIGGER alerts_inserted AFTER INSERT ON alerts FOR EACH ROW EXECUTE FUNCTION relay_alert_changed()",
        """
        CREATE TRIGGER alerts_changed AFTER UPDATE OF state, track_id ON alerts FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.track_id IS DISTINCT FROM NEW.track_id)
        EXECUTE FUNCTION relay_alert_changed()
        """,
    ],
    # 3: what a channel's receipts will call a sent message (an SMSC's message id, in each reading of it), so a
    # receipt that comes after a restart, or over another relay's bind, still finds its delivery
    [
        """
        CREATE TABLE receipt_refs (
            channel      text NOT NULL,
            ref          text NOT NULL,
            delivery_id  text NOT NULL,
            at           double precision NOT NULL,
            PRIMARY KEY (channel, ref, delivery_id)
        )
        """,
        "CREATE INDEX receipt_refs_at ON receipt_refs (at)",
    ],
]

# The key of the transaction-scoped advisory lock that serialises relays migrating at the same moment.
MIGRATION_LOCK = 0x75617672_2D6D6967  # "uavr-mig"


async def migrate(conn: psycopg.AsyncConnection[TupleRow]) -> int:
    """Bring the schema up to date, one migration per transaction; returns the version now in place. Each
    transaction first takes the advisory lock, then reads the version: a relay that waited finds the work done."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
            )
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            row = await cur.fetchone()
            current = int(row[0]) if row is not None else 0
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {current} is newer than this relay knows ({len(MIGRATIONS)})"
                )
            if current == len(MIGRATIONS):
                return current
            for statement in MIGRATIONS[current]:
                await conn.execute(statement)  # the schema's own fixed statements
            await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                               (current + 1, time.time()))
