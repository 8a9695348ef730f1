"""Wires the relay together and runs it under one TaskGroup, until told to stop; then drains and stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from channels.base import Channel
from channels.cot import CotChannel, CotSettings
from channels.email import SmtpEmailChannel, SmtpSettings
from channels.mqtt import MqttChannel, MqttSettings
from channels.smpp import SmppSettings, SmppSmsChannel
from channels.sms import TwilioReceiver, TwilioSettings, TwilioSmsChannel
from channels.voice import TwilioVoiceChannel, VoiceReceiver, VoiceSettings
from relay.domain.clock import Clock, SystemClock
from relay.domain.config import Settings
from relay.domain.cot import CotStyle
from relay.domain.escalation import Policy
from relay.domain.render import Renderer
from relay.domain.routing import Desk
from relay.domain.topics import Topics
from relay.domain.tracks import TrackParams
from relay.edges.api.context import ApiContext
from relay.edges.api.failures import AuthGuard, FailureTrail
from relay.edges.api.server import HttpLimits, HttpServer
from relay.edges.auth import Authenticator
from relay.edges.mqtt_events import MqttEventPublisher
from relay.edges.mqtt_intake import MqttReportIntake
from relay.edges.ratelimit import RateLimiter
from relay.engine.ack_links import AckLinkSigner, load_or_create_key
from relay.engine.change_feed import ChangeFeed
from relay.engine.cot_feed import CotFeed
from relay.engine.dispatch import Dispatcher
from relay.engine.engine import Engine
from relay.engine.events import EventBus
from relay.engine.intake import Intake
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.engine.peers import Peers
from relay.engine.plug_board import Form, Plug
from relay.engine.sms_replies import ContainedReplies, SmsReplies
from relay.engine.track_book import TrackBook
from relay.engine.voice_calls import VoiceCalls
from relay.operations.canary import Canary
from relay.operations.retention import Retention
from relay.operations.systemd import Notifier
from relay.store.base import Store, StoreUnavailable
from relay.store.open import RunningStore, open_store

log = logging.getLogger("relay.daemon")

# SIGTERM/SIGINT: in-flight sends get this long to finish; whatever is left stays queued on disk.
DRAIN_S = 5.0
# A relay started while its database server did not answer: how often its engine asks again (doubling up to the max).
STORE_WAIT_FIRST_S, STORE_WAIT_MAX_S = 0.25, 2.0


def twilio_settings(settings: Settings) -> TwilioSettings:
    sms = settings.sms
    return TwilioSettings(
        account_sid=sms.account_sid,
        auth_token=sms.auth_token.get_secret_value(),
        from_number=sms.from_number,
        api_base_url=sms.api_base_url,
        status_callback_url=f"{settings.http.public_url}/webhooks/twilio/status",
        timeout_s=sms.timeout_s,
    )


def smpp_settings(settings: Settings) -> SmppSettings:
    sms, smpp = settings.sms, settings.sms.smpp
    return SmppSettings(
        hosts=tuple(smpp.nodes()),
        system_id=smpp.system_id,
        password=smpp.password.get_secret_value(),
        system_type=smpp.system_type,
        source_addr=smpp.source_addr,
        enquire_link_s=smpp.enquire_link_s,
        submit_timeout_s=sms.timeout_s,
        validity_period_s=sms.validity_period_s or int(settings.escalation.repeat_s),
        # the SMSC back: sending again within 2 s (the target), however long it was away
        reconnect_max_s=1.5,
    )


def sms_channel(settings: Settings, now: Callable[[], float], store: Store | None = None) -> Channel | None:
    """The SMS channel on its provider's transport: Twilio's REST API, or an SMSC over SMPP. With `store`, an
    SMSC's receipt for a message this process did not send (before a restart, over another relay's bind) is
    matched by the refs recorded with its delivery."""
    if not settings.sms.enabled:
        return None
    if settings.sms.provider == "smpp":
        recall = None
        if store is not None:
            async def recall(refs: list[str]) -> str | None:
                return ",".join(await store.deliveries_by_ref("sms", refs)) or None

        return SmppSmsChannel(smpp_settings(settings), clock=now, recall=recall)
    return TwilioSmsChannel(twilio_settings(settings), now)


def voice_settings(settings: Settings) -> VoiceSettings:
    """[voice], with [sms]'s account and API where it sets none of its own."""
    v, sms = settings.voice, settings.sms
    return VoiceSettings(
        account_sid=v.account_sid or sms.account_sid,
        auth_token=v.auth_token.get_secret_value() or sms.auth_token.get_secret_value(),
        from_number=v.from_number,
        api_base_url=v.api_base_url or sms.api_base_url,
        public_url=settings.http.public_url,
        timeout_s=v.timeout_s,
        machine_detection=v.machine_detection,
        async_amd=v.async_amd,
        ring_timeout_s=v.ring_timeout_s,
    )


def smtp_settings(settings: Settings) -> SmtpSettings:
    e = settings.email
    return SmtpSettings(
        host=e.host,
        port=e.port,
        from_address=e.from_address,
        starttls=e.starttls,
        tls=e.tls,
        username=e.username or None,
        password=e.password.get_secret_value() or None,
        ca_file=str(e.ca_file) if e.ca_file else None,
        timeout_s=e.timeout_s,
    )


def mqtt_settings(settings: Settings, topics: Topics) -> MqttSettings:
    m = settings.mqtt
    return MqttSettings(
        host=m.host,
        port=m.port,
        client_id=m.client_id,
        reply_filter=topics.acks_filter,
        status_topic=topics.status(m.client_id),
        username=m.username or None,
        password=m.password.get_secret_value() or None,
        tls=m.tls,
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
        keepalive_s=m.keepalive_s,
        publish_timeout_s=m.publish_timeout_s,
        session_expiry_s=m.session_expiry_s,
        reconnect_max_s=m.reconnect_max_s,
        protocol=m.protocol,
        hosts=tuple(m.nodes()),
        share_group=m.share_group,
    )


def cot_settings(settings: Settings) -> CotSettings:
    c = settings.cot
    return CotSettings(
        url=c.url,
        cert_file=str(c.cert_file) if c.cert_file else None,
        key_file=str(c.key_file) if c.key_file else None,
        ca_file=str(c.ca_file) if c.ca_file else None,
        write_timeout_s=c.write_timeout_s,
        reconnect_max_s=c.reconnect_max_s,
    )


def cot_style(settings: Settings) -> CotStyle:
    return CotStyle(join_window_s=settings.tracks.join_window_s, stale_margin_s=settings.cot.stale_margin_s,
                    callsign_prefix=settings.cot.callsign_prefix)


def plugs(
    topics: Topics, mqtt: Channel, sms: Channel | None, email: Channel | None, *, give_up_s: float,
    sms_validity_s: int, voice: Channel | None = None,
) -> tuple[Plug, list[Plug]]:
    """The plug board: the one place that says which channel is what (CONTRACT.md's escalation rule)."""
    primary = Plug(mqtt, Form.CONSOLE, lambda desk: [topics.alerts(desk.id)], workers=64,
                   expiry_s=int(give_up_s))  # an alert nobody acked by give-up is not news any more
    backups = []
    if sms is not None:
        backups.append(Plug(sms, Form.TEXT, lambda desk: desk.sms, expiry_s=sms_validity_s))
    if email is not None:
        backups.append(Plug(email, Form.LETTER, lambda desk: desk.email, workers=16))
    if voice is not None:  # a worker waits out each call: as many at once as desks called together
        backups.append(Plug(voice, Form.CALL, lambda desk: desk.voice, workers=32))
    return primary, backups


class Relay:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.store: RunningStore | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        topics = Topics(s.mqtt.topic_prefix)
        store = self.store = await open_store(s.store, relay_id=s.mqtt.client_id)
        bus = EventBus()
        desks = [Desk.from_config(d) for d in s.desks]
        now = self.clock.now
        mqtt = MqttChannel(mqtt_settings(s, topics), now)
        sms = sms_channel(s, now, store)
        email = SmtpEmailChannel(smtp_settings(s), now) if s.email.enabled else None
        voice = TwilioVoiceChannel(voice_settings(s), now) if s.voice.enabled else None
        backups: list[Channel] = [c for c in (sms, email, voice) if c is not None]
        primary, backup_plugs = plugs(topics, mqtt, sms, email, give_up_s=s.escalation.give_up_s,
                                      sms_validity_s=s.sms.validity_period_s or int(s.escalation.repeat_s),
                                      voice=voice)
        voice_calls = VoiceCalls(store, self.clock)
        renderer = Renderer(ZoneInfo(s.relay.timezone), s.templates.overrides())
        ack_links = AckLinkSigner(
            load_or_create_key(s.http.ack_link_key.get_secret_value(), s.relay.data_dir), s.http.ack_link_ttl_s
        )
        jobs = Jobs(self.metrics)
        poke = asyncio.Event()  # a due time stored earlier than the scheduler's next look (a failed send)

        async def store_writable() -> bool:
            try:
                await store.check_writable()
            except StoreUnavailable:
                return False
            return True

        dispatcher = Dispatcher(
            store=store,
            plugs=[primary, *backup_plugs],
            renderer=renderer,
            topics=topics,
            clock=self.clock,
            metrics=self.metrics,
            bundle_window_s=s.sms.bundle_window_s,
            ack_links=ack_links,
            public_url=s.http.public_url,
            poke=poke,
            jobs=jobs,
            calls=voice_calls,
        )
        engine = self.engine = Engine(
            store=store,
            desks=desks,
            policy=Policy(
                ack_timeout_s=s.escalation.ack_timeout_s,
                repeat_s=s.escalation.repeat_s,
                give_up_s=s.escalation.give_up_s,
                retry_s=s.escalation.retry_s,
                backups=frozenset(c.name for c in backups),
                voice_after_s=s.escalation.voice_after_s if voice is not None else None,
            ),
            clock=self.clock,
            bus=bus,
            metrics=self.metrics,
            topics=topics,
            primary=primary,
            backups=backup_plugs,
            dispatcher=dispatcher,
            jobs=jobs,
            poke=poke,
            book=TrackBook(
                TrackParams(s.tracks.join_window_s, s.tracks.max_speed_kmh, s.tracks.position_error_km),
                enabled=s.tracks.enabled,
            ),
        )
        auth = Authenticator(s.operators, s.desks, s.engineers)
        intake = Intake(engine, self.clock, self.metrics)
        limiter = RateLimiter(s.http.rate_per_s, s.http.rate_burst)
        report_intake = MqttReportIntake(intake, mqtt, topics, auth.operator_ids, limiter, self.clock)
        mqtt.listen(engine, {topics.reports_filter: jobs.contain(
            JobKind.INBOUND, report_intake.on_report, lambda m: {"topic": m.topic[:200]}
        )})
        self.metrics.channel_up.labels(mqtt.name).set(0)
        for channel in backups:  # up from the start (a closed circuit), except an SMSC's bind until it is made
            self.metrics.channel_up.labels(channel.name).set(1 if channel.health.is_up else 0)
        self.metrics.watch_open_alerts(lambda: engine.open_alerts)
        self.metrics.store_up.set_function(lambda: 1 if store.last_error is None else 0)
        trail = FailureTrail(store, self.clock)
        voice_calls.serve(engine)
        replies = SmsReplies(engine, store, desks, self.clock, self.metrics)
        if isinstance(sms, SmppSmsChannel):  # replies and receipts come over the bind, not through a webhook
            sms.set_sink(ContainedReplies(replies, jobs))
        h = s.http
        http = HttpServer(
            ApiContext(
                public_url=s.http.public_url,
                auth=auth,
                limiter=limiter,
                intake=intake,
                engine=engine,
                store=store,
                bus=bus,
                metrics=self.metrics,
                clock=self.clock,
                channels=[c.health for c in (mqtt, *backups)],
                renderer=renderer,
                ack_links=ack_links,
                # The wiring names the providers: /webhooks/twilio/... goes to the SMS channel's receiver.
                receivers={
                    **({"twilio": TwilioReceiver(s.sms.auth_token.get_secret_value())}
                       if isinstance(sms, TwilioSmsChannel) else {}),
                    **({"twilio/voice": VoiceReceiver(voice_settings(s), voice.scripts, sink=voice_calls)}
                       if voice is not None else {}),
                },
                replies=replies,
                consoles=s.consoles,
                cap=s.cap,
                places=s.consoles.places(),
            ),
            h.host,
            h.port,
            AuthGuard(h.anon_rate_per_s, h.anon_burst, trail, self.metrics, self.clock),
            HttpLimits(header_timeout_s=h.header_timeout_s, max_connections=h.max_connections,
                       max_streams_per_token=h.max_streams_per_token),
        )
        if not s.operators or not s.desks:
            log.warning(
                "no operators or no desks configured: reports cannot be filed or go nowhere",
                extra={"event": "config_empty", "operators": len(s.operators), "desks": len(s.desks)},
            )

        async with asyncio.TaskGroup() as tg:
            store_task = tg.create_task(store.run(), name="store")
            housekeeping = [
                tg.create_task(trail.run(), name="auth_failures"),
                tg.create_task(Retention(store, self.clock, s.store.retention_days).run(), name="retention"),
            ]
            # A channel (or the canary, or the event publisher) that raises is restarted after a pause: that
            # channel is down for a moment, the relay is not.
            mqtt_task = tg.create_task(jobs.supervise("mqtt", mqtt.run), name="mqtt")
            backup_tasks = [tg.create_task(jobs.supervise(c.name, c.run), name=c.name) for c in backups]
            canary_targets: dict[Channel, str] = {
                c: t for c, t in ((sms, s.canary.sms_to), (email, s.canary.email_to)) if c is not None and t
            }
            canary = Canary(canary_targets, s.canary.interval_s, self.clock, self.metrics)
            backup_tasks.append(tg.create_task(jobs.supervise("canary", canary.run), name="canary"))
            try:
                await engine.load_tracks()
                tracks_loaded = True
            except StoreUnavailable as exc:  # a database server not answering: the relay starts, refusing reports
                log.error("store unavailable at start: reports are refused until it answers",
                          extra={"event": "store_unavailable_at_start", "error": str(exc)})
                tracks_loaded = False
            peers = None
            if store.shared:  # several relays on one database: a lease, takeovers, the others' changes
                peers = Peers(store=store, engine=engine, clock=self.clock, metrics=self.metrics,
                              lease_s=s.store.lease_s)
                feed = ChangeFeed(store=store, bus=bus, book=engine.tracks, clock=self.clock, metrics=self.metrics,
                                  recount=engine.recount_open)
                housekeeping += [tg.create_task(jobs.supervise("change_feed", feed.run), name="change_feed"),
                                 tg.create_task(jobs.supervise("peers", peers.run), name="peers")]
            engine_task = tg.create_task(_engine_when_store_answers(engine, tracks_loaded, peers), name="engine")
            if peers is not None:
                # before intake opens: a report this relay accepts is claimed by it, and a claim of a relay that
                # holds no lease yet is anyone's (another relay would send it too)
                with contextlib.suppress(StoreUnavailable):  # the engine's start renews it when the store answers
                    await peers.renew()
            dispatch_task = tg.create_task(dispatcher.run(), name="dispatch")
            events = MqttEventPublisher(bus, mqtt, topics, self.metrics)
            events_task = tg.create_task(jobs.supervise("events", events.run), name="events")
            cot_tasks = []
            if s.cot.enabled:  # every track on a TAK map; its channel and feed fail and restart on their own
                cot = CotChannel(cot_settings(s), now)
                feed_cot = CotFeed(store=store, bus=bus, channel=cot, clock=self.clock, style=cot_style(s),
                                   public_url=s.http.public_url, metrics=self.metrics, jobs=jobs)
                cot_tasks = [tg.create_task(jobs.supervise("cot", cot.run), name="cot"),
                             tg.create_task(jobs.supervise("cot_feed", feed_cot.run), name="cot_feed")]
            await http.start()
            self.http_port = http.port
            self.ready.set()
            notifier = Notifier()
            notifier.send("READY=1\nSTATUS=relaying")
            watchdog_task = tg.create_task(notifier.watchdog(store_writable), name="watchdog")
            log.info("relay running", extra={"event": "relay_started", "port": http.port})
            await stop.wait()

            notifier.send("STOPPING=1")
            watchdog_task.cancel()
            log.info("stopping: intake closed, draining sends", extra={"event": "relay_stopping"})
            await http.stop()
            drained = await dispatcher.drain(DRAIN_S)
            log.info("drained" if drained else "drain timed out: the rest stays queued on disk",
                     extra={"event": "relay_drained", "complete": drained})
            for task in housekeeping:  # after the HTTP stop, so the last failures counted are written
                task.cancel()
                await asyncio.wait([task])
            # the store last: what the others still write is committed
            for task in (*cot_tasks, engine_task, dispatch_task, events_task, *backup_tasks, mqtt_task, store_task):
                task.cancel()
                await asyncio.wait([task])
        log.info("relay stopped", extra={"event": "relay_stopped"})


async def _engine_when_store_answers(engine: Engine, tracks_loaded: bool, peers: Peers | None) -> None:
    """The engine, once its first reads (the tracks a report may join, the open alerts) found the store answering;
    until then the store refuses every report (503). A report stored in the moment between the store answering and
    these reads may start a track of its own instead of joining one (a dispatcher can merge it). With several
    relays, this relay's lease first: its claims hold from then."""
    wait = STORE_WAIT_FIRST_S
    while True:
        try:
            if peers is not None:
                await peers.renew()
            if not tracks_loaded:
                await engine.load_tracks()
                tracks_loaded = True
            await engine.run()  # its scheduler handles the store's failures itself: only its first read raises
            return
        except StoreUnavailable:
            await asyncio.sleep(wait)
            wait = min(wait * 2, STORE_WAIT_MAX_S)
