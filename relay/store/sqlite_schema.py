"""SQLite schema, as forward migrations. Append a step; never edit one that has shipped."""

from __future__ import annotations

import sqlite3

# Every index here is written at each report's commit, and every page written is fsync'd before the 201:
# an index earns its place only if a query on the hot path or the API needs it.
MIGRATIONS: list[str] = [
    # 1: the spine
    """
    CREATE TABLE alerts (
        alert_id        TEXT PRIMARY KEY,   -- monotonic ULID: its order is the order of acceptance
        operator_id     TEXT NOT NULL,
        report_id       TEXT NOT NULL,
        content_sha256  TEXT NOT NULL,
        report_json     TEXT NOT NULL,
        desks_json      TEXT NOT NULL,
        short_code      TEXT NOT NULL,
        priority        TEXT NOT NULL,
        stale           INTEGER NOT NULL,
        state           TEXT NOT NULL,
        source          TEXT NOT NULL,
        created_at      REAL NOT NULL,
        next_action_at  REAL,
        backup_rounds   INTEGER NOT NULL DEFAULT 0,
        last_backup_at  REAL,
        closed_at       REAL,
        UNIQUE (operator_id, report_id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX alerts_open_short_code ON alerts (short_code)
        WHERE state IN ('pending', 'delivered');
    CREATE INDEX alerts_due ON alerts (next_action_at) WHERE next_action_at IS NOT NULL;

    CREATE TABLE alert_desks (
        desk_id   TEXT NOT NULL,
        alert_id  TEXT NOT NULL,
        PRIMARY KEY (desk_id, alert_id)
    ) WITHOUT ROWID;

    CREATE TABLE deliveries (
        delivery_id  TEXT PRIMARY KEY,      -- starts with the alert_id (the per-alert index is deliveries_alert)
        alert_id     TEXT NOT NULL,
        desk_id      TEXT NOT NULL,
        channel      TEXT NOT NULL,
        target       TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        sent_at      REAL,
        delivered_at REAL,
        error        TEXT,
        permanent    INTEGER NOT NULL DEFAULT 0,
        attempted_at REAL,
        updated_at   REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_queued ON deliveries (channel, alert_id) WHERE state = 'queued';

    CREATE TABLE acks (
        id        INTEGER PRIMARY KEY,
        alert_id  TEXT NOT NULL,
        desk_id   TEXT NOT NULL,
        channel   TEXT NOT NULL,
        by        TEXT NOT NULL,
        at        REAL NOT NULL,
        latency_s REAL NOT NULL,
        first     INTEGER NOT NULL
    );
    CREATE INDEX acks_alert ON acks (alert_id, id);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        alert_id    TEXT NOT NULL,
        at          REAL NOT NULL,
        kind        TEXT NOT NULL,
        detail_json TEXT NOT NULL
    );
    CREATE INDEX events_alert ON events (alert_id, id);

    CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
    INSERT INTO heartbeat VALUES (1, 0);
    """,
    # 2: phones that replied STOP get no SMS until they reply START
    """
    CREATE TABLE sms_opt_outs (
        phone TEXT PRIMARY KEY,
        at    REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: the audit trail: where each ack came from, and a way to list acks and refusals across alerts
    """
    ALTER TABLE acks ADD COLUMN source TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_kind ON events (kind, id);
    """,
    # 4: hardening. Failed authentication is kept as one row per (kind, endpoint, source address, hour) with a
    # count, so a flood writes O(1) rows; inbound message ids (Twilio's MessageSid) make a redelivered webhook
    # count once; `at` indexes let the daily retention prune delete old rows in small batches without a scan.
    """
    CREATE TABLE auth_failures (
        kind      TEXT NOT NULL,
        endpoint  TEXT NOT NULL,
        source    TEXT NOT NULL,
        bucket    REAL NOT NULL,        -- start of the hour the failures fell in
        count     INTEGER NOT NULL,
        first_at  REAL NOT NULL,
        last_at   REAL NOT NULL,
        reason    TEXT NOT NULL,        -- the latest reason seen, e.g. "X-Twilio-Signature does not match"
        PRIMARY KEY (kind, endpoint, source, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX auth_failures_last ON auth_failures (last_at);

    CREATE TABLE inbound_messages (
        channel     TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (channel, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX inbound_messages_at ON inbound_messages (at);

    CREATE INDEX events_at ON events (at);
    """,
    # 5: every per-alert read of deliveries (a backup round, an ack, a give-up, reading an alert) scanned the whole
    # table, slower with every alert ever kept (the ten-minute hostile soak found the relay's core full of it);
    # and an SMS reply quoting the code of an alert given up in the last day scanned every alert
    """
    CREATE INDEX deliveries_alert ON deliveries (alert_id);
    CREATE INDEX alerts_given_up_code ON alerts (short_code, closed_at) WHERE state = 'unacknowledged';
    """,
    # 6: tracks (CONTRACT.md, "Tracks"). Every alert belongs to one; an alert from before this step is a track of
    # its own, whose estimate is rebuilt from its report when first read (estimate_json '').
    """
    ALTER TABLE alerts ADD COLUMN track_id TEXT NOT NULL DEFAULT '';
    UPDATE alerts SET track_id = alert_id;
    CREATE INDEX alerts_track ON alerts (track_id, alert_id);
    ALTER TABLE acks ADD COLUMN via_track INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE tracks (
        track_id       TEXT PRIMARY KEY,
        estimate_json  TEXT NOT NULL,
        opened_at      REAL NOT NULL,
        last_seen      REAL NOT NULL,   -- the estimate's latest observed_at: which tracks a report may join
        updated_at     REAL NOT NULL,   -- latest activity: the order of GET /api/v1/tracks
        acks_json      TEXT NOT NULL DEFAULT '{}',  -- each desk's first ack of it (covering its later alerts)
        merged_into    TEXT             -- a dispatcher merged it into that track
    ) WITHOUT ROWID;
    INSERT INTO tracks (track_id, estimate_json, opened_at, last_seen, updated_at)
        SELECT alert_id, '', created_at, created_at, created_at FROM alerts;
    CREATE INDEX tracks_last_seen ON tracks (last_seen);
    CREATE INDEX tracks_updated ON tracks (updated_at);
    """,
    # 7: what a channel's receipts will call a sent message (an SMSC's message id, in each reading of it), so a
    # receipt that comes after a restart still finds its delivery
    """
    CREATE TABLE receipt_refs (
        channel      TEXT NOT NULL,
        ref          TEXT NOT NULL,
        delivery_id  TEXT NOT NULL,
        at           REAL NOT NULL,
        PRIMARY KEY (channel, ref, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX receipt_refs_at ON receipt_refs (at);
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version now in place."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] or 0
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this relay knows ({len(MIGRATIONS)})"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
