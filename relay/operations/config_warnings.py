"""What a valid config may still get wrong, which only a send would show: said before the first alert needs it.

`relay check-config` prints these and `relay run` logs them at start. Whether the SMTP server really offers
STARTTLS, AUTH and SMTPUTF8 is a fact about the server, not the file: `relay test-channels` asks the server.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from relay.domain.config import Settings

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SMPP34_ENQUIRE_LINK_S = 30.0  # smpp34's own timer: its client offers no way to set it or to send enquire_link


def config_warnings(s: Settings) -> list[str]:
    found: list[str] = []
    backups = [name for name, on in (("sms", s.sms.enabled), ("email", s.email.enabled)) if on]
    if s.email.enabled:
        if s.email.starttls:
            found.append("email.starttls: the SMTP server must offer STARTTLS, or every e-mail fails "
                         "(relay test-channels checks it)")
        if s.email.username:
            found.append("email.username: the SMTP server must offer AUTH, or every e-mail fails "
                         "(relay test-channels checks it)")
            if not (s.email.starttls or s.email.tls):
                found.append("email.username: the login would cross the network unencrypted; set starttls or tls")
        for n, desk in enumerate(s.desks):
            for address in desk.email:
                if not address.isascii():
                    found.append(f"desks[{n}].email: {address!r} has non-ASCII characters: the SMTP server must "
                                 "offer SMTPUTF8, or e-mail to it fails (relay test-channels checks it)")
        if not s.email.from_address.isascii():
            found.append("email.from_address: non-ASCII: the SMTP server must offer SMTPUTF8")
    if s.sms.enabled and s.sms.provider == "twilio" and urlsplit(s.http.public_url).hostname in _LOOPBACK:
        found.append("http.public_url: a loopback address: the SMS provider cannot reach it, so SMS receipts and "
                     "SMS replies (acks) will never arrive")
    if s.sms.enabled and s.sms.provider == "smpp" and s.sms.smpp.enquire_link_s < SMPP34_ENQUIRE_LINK_S:
        found.append(f"sms.smpp.enquire_link_s: {s.sms.smpp.enquire_link_s:g} s, but the SMPP library sends "
                     f"enquire_link every {SMPP34_ENQUIRE_LINK_S:g} s whatever this says: an SMSC that drops a bind "
                     "idle for less will drop this one; the value only sets how often the relay checks the bind")
    if s.voice.enabled and urlsplit(s.http.public_url).hostname in _LOOPBACK:
        found.append("http.public_url: a loopback address: Twilio cannot reach it, so a key pressed on a call (the "
                     "ack) and the calls' status never arrive")
    if s.voice.enabled:
        found += [f"desks[{n}].voice: empty: this desk is never called" for n, d in enumerate(s.desks) if not d.voice]
    if s.mqtt.hosts or s.mqtt.protocol == "3.1.1":
        # NATS's MQTT listener closes the connection of a client that publishes to a topic level holding a dot:
        # the relay would be cut off at every alert for such a desk (docs/operations.md, "A clustered broker")
        for kind, people in (("desks", s.desks), ("operators", s.operators)):
            for n, who in enumerate(people):
                if "." in who.id:
                    found.append(f"{kind}[{n}].id: {who.id!r} holds a '.': a NATS broker drops the relay's "
                                 "connection at every message to its topics; use - or _ instead")
    if s.store.kind == "postgresql":
        # several relays may share the database: each must name itself, and sign what another one checks
        if not s.http.ack_link_key.get_secret_value():
            found.append("http.ack_link_key: empty, so this relay signs e-mail ack links with a key of its own (in "
                         "data_dir): a link opened on another relay of the same database is refused; give every "
                         "relay one key")
        if s.mqtt.client_id == "uav-relay-1":
            found.append("mqtt.client_id: the default; with several relays on one database each needs its own (it "
                         "names the relay's claims on alerts)")
    if s.mqtt.share_group and (s.mqtt.hosts or s.mqtt.protocol == "3.1.1"):
        found.append("mqtt.share_group: set for a broker that speaks MQTT 3.1.1 or is a cluster: NATS's MQTT has no "
                     "shared subscriptions, so reports and acks may never reach this relay; leave it empty there")
    found += _cot_warnings(s)
    if backups:
        for n, desk in enumerate(s.desks):
            if not ((s.sms.enabled and desk.sms) or (s.email.enabled and desk.email)):
                found.append(f"desks[{n}]: no {' or '.join(backups)} target: while MQTT is down this desk "
                             "gets nothing")
    return found


def _cot_warnings(s: Settings) -> list[str]:
    if not s.cot.enabled:
        return []
    found = []
    if not s.tracks.enabled:
        found.append("cot.enabled with tracks.enabled false: every report is a marker of its own on the TAK map")
    host = urlsplit(s.cot.url).hostname
    if not s.cot.url.startswith("tls://") and host not in _LOOPBACK:
        found.append(f"cot.url: {s.cot.url.split('://')[0]}:// to {host}: the drones' positions cross the network "
                     "unencrypted and unauthenticated; a TAK server's tls:// port takes a client certificate")
    return found
