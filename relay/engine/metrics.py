"""The relay's Prometheus metrics, in a registry of its own (one per daemon, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

# From 1 ms (a healthy MQTT hop) to 15 min (give-up): latency here spans six orders of magnitude.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.reports = Counter("relay_reports", "Reports accepted (new, not replays)", ["source"], registry=r)
        self.reports_rejected = Counter(
            "relay_reports_rejected", "Reports refused, by reason", ["reason"], registry=r
        )
        self.delivery_seconds = Histogram(
            "relay_delivery_seconds", "Report accepted -> channel accepted the message", ["channel"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ack_seconds = Histogram(
            "relay_ack_seconds", "Report accepted -> first human acknowledgement", ["channel"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.deliveries = Counter(
            "relay_deliveries", "Delivery attempts by outcome (sent, delivered, or a failure reason)",
            ["channel", "outcome"], registry=r,
        )
        self.failovers = Counter("relay_failovers", "Backups fired because the primary failed", ["reason"], registry=r)
        self.channel_up = Gauge("relay_channel_up", "1 while the channel is up (degraded counts as up)", ["channel"],
                                registry=r)
        self.channel_last_success = Gauge(
            "relay_channel_last_success_timestamp_seconds", "When the channel last accepted a message",
            ["channel"], registry=r,
        )
        self.channel_send_seconds = Histogram(
            "relay_channel_send_seconds", "One send call to the channel's provider, retries included",
            ["channel"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.backup_rounds = Counter(
            "relay_backup_rounds", "Rounds of backup sends, by why they fired (flash, failover, ack_timeout, repeat)",
            ["reason"], registry=r,
        )
        self.sms_status = Counter(
            "relay_sms_status_callbacks", "Twilio status callbacks by the status they report", ["status"], registry=r,
        )
        self.webhooks_rejected = Counter(
            "relay_webhooks_rejected", "Webhook calls refused (bad signature and the like)", ["webhook", "reason"],
            registry=r,
        )
        self.canary = Counter("relay_canary", "Canary test messages by channel and outcome", ["channel", "outcome"],
                              registry=r)
        self.alerts_open = Gauge("relay_alerts_open", "Alerts neither acknowledged nor given up", registry=r)
        self.unacknowledged = Counter(
            "relay_alerts_unacknowledged", "Alerts given up without any acknowledgement", registry=r
        )
        self.acks_rejected = Counter(
            "relay_acks_rejected", "Acknowledgements and receipts refused, by reason", ["channel", "reason"],
            registry=r,
        )
        self.store_up = Gauge("relay_store_up", "1 while the last store commit succeeded", registry=r)
        self.events_dropped = Counter(
            "relay_events_dropped", "State events a slow listener missed", registry=r
        )
        self.auth_failures = Counter(
            "relay_auth_failures", "Requests that failed authentication (no or bad bearer token, bad e-mail link, "
            "unsigned webhook), by route; those over the per-address rate included", ["endpoint"], registry=r,
        )
        self.http_connections = Gauge("relay_http_connections", "HTTP connections open now", registry=r)
        self.http_refused = Counter(
            "relay_http_refused", "HTTP connections and streams refused or cut by a limit: max_connections, "
            "header_timeout, streams_per_token", ["reason"], registry=r,
        )
        self.job_failures = Counter(
            "relay_job_failures", "Jobs (a delivery, an inbound message, a scheduled step, a request, a task) that "
            "failed on their own with an unexpected error; the daemon went on", ["kind", "reason"], registry=r,
        )

        # several relays on one store (CONTRACT.md, "More than one relay")
        self.peers_alive = Gauge("relay_peers_alive", "Relays whose lease is live, this one included, as the "
                                 "shared store says", registry=r)
        self.takeovers = Counter("relay_takeovers", "Alerts this relay took over from a relay whose lease lapsed",
                                 registry=r)
        self.lease_lapsed = Counter(
            "relay_lease_lapsed", "Times this relay found its own lease lapsed (cut off from the store longer than "
            "store.lease_s: another relay may have taken its work)", registry=r,
        )
        self.change_feed_events = Counter(
            "relay_change_feed_events", "Other relays' alert state changes this relay passed to its operators",
            registry=r,
        )
        self.change_feed_lag = Histogram(
            "relay_change_feed_lag_seconds", "Another relay's commit of a state change -> this relay passes it on",
            buckets=LATENCY_BUCKETS, registry=r,
        )

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, looked up once: prometheus_client checks and locks on every `labels()` call,
        a few microseconds on each report's path for what is always the same handful of children."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def watch_open_alerts(self, count: Callable[[], int]) -> None:
        self.alerts_open.set_function(count)
