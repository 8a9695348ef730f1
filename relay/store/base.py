"""What the engine needs from durable storage. SQL lives in the implementations only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relay.domain.records import (
    Accepted,
    AckRecord,
    AckResult,
    AlertChange,
    AlertRecord,
    AttemptOutcome,
    AuthFailureTally,
    DeliveryRecord,
    EventRecord,
    Lease,
    NewAlert,
    OpenInTrack,
    ReceiptResult,
    Schedule,
    TrackRecord,
)
from relay.domain.states import AlertState
from relay.domain.tracks import TrackState


class StoreUnavailable(Exception):
    """The store could not make a change durable; nothing of that change was kept."""


class Store(Protocol):
    # Several relays may share this store (PostgreSQL): then each claims the alerts it steps and sends, holds its
    # claims with a lease, and reads the others' changes (CONTRACT.md, "More than one relay"). A store for one
    # relay (SQLite) answers those calls as for a lone relay.
    shared: bool
    relay_id: str  # this relay's name in the store: its claims carry it

    async def run(self) -> None:
        """The writer: commits queued changes in batches until cancelled, then flushes and closes."""
        ...

    async def accept(self, new: NewAlert) -> Accepted:
        """Store a new alert (report, deliveries, routing, history) durably; or find its replay or conflict."""
        ...

    async def get_alert(self, alert_id: str) -> AlertRecord | None: ...

    async def list_alerts(
        self,
        *,
        states: Sequence[AlertState] | None,
        limit: int,
        operator_id: str | None = None,
        desk_id: str | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
    ) -> list[AlertRecord]:
        """Newest first by acceptance order (the alert ids' order); with `after_id`, oldest first from there, as a
        reader paging forward needs (the CAP feed). Only ids strictly between `after_id` and `before_id`."""
        ...

    async def finish_attempt(
        self, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None = None,
        refs: Sequence[str] = (), channel: str = "",
    ) -> DeliveryRecord | None:
        """Record how a send went; None when the delivery was cancelled or is unknown. A failed send makes its
        open alert due now, in the same commit (the scheduler decides what follows). `refs`: the names under
        which the channel's receipts may name the sent message (see `deliveries_by_ref`)."""
        ...

    async def deliveries_by_ref(self, channel: str, refs: Sequence[str]) -> list[str]:
        """The deliveries a receipt names, by the refs recorded when they were sent (an SMSC's message id is only
        in the relay's memory until a restart; its receipt may come hours later). The first ref that matches
        wins; among the sends recorded under it, the latest one's deliveries (a bundle is several)."""
        ...

    async def start_attempt(self, delivery_id: str, at: float) -> DeliveryRecord | None:
        """Mark a delivery as being sent (the outbox step before a send); None if the alert is closed."""
        ...

    async def mark_delivered(
        self, alert_id: str, desk_id: str, channel: str, at: float
    ) -> ReceiptResult | None:
        """A receipt: that desk's deliveries on that channel are delivered. None: no such delivery."""
        ...

    async def mark_shown(self, alert_id: str, desk_id: str, at: float) -> ReceiptResult | None:
        """A desk's web console shows the alert: its `web` delivery for that desk, created delivered the first
        time (later calls change nothing); the alert delivered if it was pending. None: no such alert."""
        ...

    async def record_ack(self, ack: AckRecord) -> AckResult | None:
        """First ack closes the alert and cancels queued sends; later ones are kept as duplicates. The first one
        also acknowledges the rest of the alert's track, as `ack_track` does, in the same commit."""
        ...

    async def save_schedule(self, alert_id: str, schedule: Schedule) -> None: ...

    async def give_up(self, alert_id: str, at: float) -> AlertRecord | None:
        """Make an open alert `unacknowledged` and stop its sends; None if it was not open. The other open alerts
        of its track become due at once (one of them may carry the track's backup chain now)."""
        ...

    async def due_alerts(self, now: float, limit: int) -> list[AlertRecord]:
        """Open alerts due by `now`, soonest first; in a shared store only those this relay may claim, claimed."""
        ...

    async def next_due_at(self, now: float | None = None) -> float | None:
        """The soonest due time; with `now`, in a shared store, of the alerts this relay may claim."""
        ...

    async def alerts_with_queued(self, channel: str, limit: int, now: float | None = None) -> list[AlertRecord]:
        """Open alerts that still have a delivery on `channel` that never reached it (claimed, as due_alerts)."""
        ...

    async def start_backup_round(
        self, alert_id: str, schedule: Schedule, deliveries: Sequence[DeliveryRecord], at: float
    ) -> list[DeliveryRecord] | None:
        """Atomically: store the schedule, create the round's deliveries that do not exist yet, and mark every
        one worth sending as SENDING (the outbox step). Returns those; None if the alert is no longer open.
        SMS to a phone that replied STOP is marked failed instead."""
        ...

    async def delivery_report(
        self, delivery_id: str, at: float, *, delivered: bool, error: str | None = None
    ) -> ReceiptResult | None:
        """A provider's word on one delivery (an SMS status callback): delivered, or failed with why."""
        ...

    async def alerts_with_sending(self, limit: int, now: float | None = None) -> list[AlertRecord]:
        """Alerts (open or closed) with a delivery marked SENDING: after a restart, sends that may not have gone out
        (claimed, as due_alerts: not those of another relay that is alive)."""
        ...

    async def get_alerts(self, alert_ids: Sequence[str]) -> list[AlertRecord]:
        """Those of these alerts that exist, in alert_id order."""
        ...

    # ---- several relays (a shared store) ----------------------------------------------------------------------

    async def renew_lease(self, now: float) -> Lease:
        """This relay's claims hold for `lease_s` more (the store's setting) from `now`."""
        ...

    async def take_over(self, now: float, limit: int) -> list[AlertRecord]:
        """At most `limit` alerts of relays whose lease lapsed (open ones, and closed ones with a send marked
        sending), claimed for this relay; those with a delivery never sent are due now."""
        ...

    async def last_change(self) -> int:
        """The change feed's latest sequence number."""
        ...

    async def changes_after(self, seq: int, missing: Sequence[int], limit: int) -> list[AlertChange]:
        """Committed changes of alerts' states or tracks after `seq`, and any of `missing`, in order."""
        ...

    async def wait_for_change(self, within_s: float) -> None:
        """Return when another relay has committed a change (a hint: read changes_after), or after `within_s`."""
        ...

    async def find_by_code(self, code: str, now: float) -> AlertRecord | None:
        """The open alert holding this short code; else the latest one given up within the last day."""
        ...

    async def set_sms_opt_out(self, phone: str, opted_out: bool, at: float) -> None: ...

    # ---- tracks (an alert's track is written with the alert, in `accept`) ---------------------------------

    async def get_track(self, track_id: str) -> TrackRecord | None:
        """With its alerts, oldest first; a merged-away track too (its `merged_into` says where they went)."""
        ...

    async def list_tracks(
        self, *, since: float | None, limit: int, operator_id: str | None = None, desk_id: str | None = None
    ) -> list[TrackRecord]:
        """Latest activity first; not merged-away ones; `since`: active since then; an operator's: those holding one
        of its reports; a desk's: those holding an alert routed to it."""
        ...

    async def recent_tracks(self, since: float) -> list[TrackRecord]:
        """Tracks whose latest report was observed at or after `since` (those a new report may join)."""
        ...

    async def merged_tracks(self, since: float) -> list[TrackRecord]:
        """Tracks a dispatcher merged away at or after `since` (a map that may still show them is told again)."""
        ...

    async def open_in_track(self, track_id: str) -> OpenInTrack:
        """When the track began, and its open alerts (a light read: one per track and scheduler pass)."""
        ...

    async def ack_track(self, track_id: str, ack: AckRecord) -> list[AckResult]:
        """Atomically: every alert of the track routed to the ack's desk and not acknowledged yet is acknowledged
        via the track, and the ack is kept on the track for its later alerts. The results of those it closed."""
        ...

    async def merge_tracks(
        self, track_id: str, into: str, estimate: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        """A dispatcher's merge: the alerts of `track_id` move to `into`, whose estimate becomes `estimate`; the
        history of each moved alert records it."""
        ...

    async def split_alert(
        self, alert_id: str, old: TrackState, new: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        """A dispatcher's split: the alert moves to the new track; both estimates are stored; its history says so."""
        ...

    async def add_event(self, event: EventRecord) -> None:
        """History of an alert; with alert_id "" an event of the relay as a whole (a refused webhook)."""
        ...

    async def audit_log(self, limit: int) -> list[EventRecord]:
        """The newest acks, refused acks and refused webhooks and links, newest first. Failed authentication
        comes as one record per (kind, endpoint, source, hour), its detail holding `count`, `first_at`, `last_at`
        (RFC 3339), `endpoint`, `from` and the latest `reason`."""
        ...

    async def add_auth_failures(self, tallies: Sequence[AuthFailureTally]) -> None:
        """Add these counts to the rows of their hour (by `last_at`), creating rows where there are none."""
        ...

    async def first_inbound(self, channel: str, message_id: str, at: float) -> bool:
        """True the first time this inbound message id is seen on this channel; False for a redelivery."""
        ...

    async def prune(self, before: float, batch: int) -> int:
        """Delete at most `batch` rows of each kind of history older than `before` (events, counted
        authentication failures, inbound message ids); the number deleted. Alerts, deliveries and acks stay."""
        ...

    async def events(self, alert_id: str) -> list[EventRecord]: ...

    async def count_open(self) -> int: ...

    async def check_writable(self) -> None:
        """Raise StoreUnavailable unless a change can be committed now."""
        ...
