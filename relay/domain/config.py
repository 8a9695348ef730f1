"""The relay's configuration: TOML file, then `RELAY_*` environment overrides, then built-in defaults."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from relay.domain.contacts import Email, check_email, check_phone
from relay.domain.gazetteer import Gazetteer
from relay.domain.render import check_template
from relay.domain.text import has_controls

# Ids become MQTT topic levels and URL parts: no '/', '+', '#', spaces.
ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelaySection(Section):
    data_dir: Path = Path("var")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    timezone: str = "Europe/Moscow"  # times in SMS and e-mail are the dispatcher's local time

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. Europe/Moscow)") from None
        return v


class StoreSection(Section):
    # sqlite:///<path>: the embedded default. postgresql://user:password@host:port/dbname: a libpq URL (the password
    # best in RELAY_STORE__URL); host1:5432,host2:5432 with ?target_session_attrs=read-write follows a switchover.
    url: str = "sqlite:///var/relay.db"
    # Audit and event rows older than this are deleted daily; alerts and their deliveries stay.
    retention_days: float = Field(90, gt=0)
    # A relay's claim on a delivery or a timer lapses this long after it died (CONTRACT.md, "More than one relay"):
    # with several relays on one PostgreSQL database, another takes its work over within lease_s + 1 s. Each
    # relay is named by its mqtt.client_id there.
    lease_s: float = Field(5, gt=0)

    _SESSION_ATTRS: ClassVar[frozenset[str]] = frozenset(
        {"any", "read-write", "read-only", "primary", "standby", "prefer-standby"})

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v.startswith("sqlite:///"):
            return v
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///<path> or postgresql://user:password@host:port/dbname")
        address, _, query = v.split("://", 1)[1].partition("?")
        hosts = address.partition("/")[0].rpartition("@")[2]
        for host in hosts.split(",") if hosts else []:  # no host: libpq's default (a local socket)
            after = host.rpartition("]")[2]  # an IPv6 address is in brackets
            port = after.partition(":")[2]
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"{host!r}: the port must be a number from 1 to 65535")
        params = dict(parse_qsl(query))
        attrs = params.get("target_session_attrs")
        if attrs is not None and attrs not in cls._SESSION_ATTRS:
            raise ValueError(f"target_session_attrs={attrs}: one of {', '.join(sorted(cls._SESSION_ATTRS))}")
        return v

    @field_serializer("url", when_used="json")
    def _masked(self, v: str) -> str:
        """`relay check-config` shows the URL without its password."""
        scheme, sep, rest = v.partition("://")
        userinfo, at, _ = rest.partition("/")[0].rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:**********@{rest[len(userinfo) + 1:]}"
        return re.sub(r"(password=)[^&]*", r"\1**********", scheme + sep + rest)

    @property
    def kind(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.url.startswith("sqlite:///") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        if self.kind != "sqlite":
            raise ValueError(f"store.url is not a SQLite file: {self.kind}")
        return Path(self.url.removeprefix("sqlite:///"))


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    rate_per_s: float = Field(100, gt=0)
    rate_burst: int = Field(1000, ge=1)
    # Key of the e-mail ack links (HMAC-SHA256); empty: generated once into data_dir/ack-link.key (mode 0600).
    ack_link_key: SecretStr = SecretStr("")
    ack_link_ttl_s: int = Field(86400, ge=60)
    # Failed authentication, per remote address: cheap to refuse, never a row per request.
    anon_rate_per_s: float = Field(20, gt=0)
    anon_burst: int = Field(100, ge=1)
    # A request head must be in within this, or the connection is closed (slow-header connections).
    header_timeout_s: float = Field(10, gt=0, le=300)
    max_connections: int = Field(2000, ge=1)
    max_streams_per_token: int = Field(20, ge=1)

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")


class MqttSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("uav-relay-1", pattern=ID_PATTERN)
    username: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_prefix: str = Field("uav", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    keepalive_s: int = Field(5, ge=1, le=3600)
    publish_timeout_s: float = Field(1.0, gt=0, le=60)
    session_expiry_s: int = Field(3600, ge=0)
    protocol: Literal["5", "3.1.1"] = "5"
    reconnect_max_s: float = Field(5.0, gt=0, le=300)
    # The nodes of one clustered broker ("host:port", IPv6 as "[::1]:1883"); set, it overrides host and port.
    hosts: list[str] = Field(default_factory=list, max_length=64)
    # Several relays on one broker: the inbound topics (reports, acks) as a shared subscription of this group, so
    # each message is taken by one relay (Mosquitto; not NATS, whose MQTT has none: leave it empty there, intake
    # is idempotent and the first ack wins).
    share_group: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,64}$")

    _HOSTNAME: ClassVar[re.Pattern[str]] = re.compile(
        r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

    @model_validator(mode="after")
    def _cert_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, v: list[str]) -> list[str]:
        seen: set[tuple[str, int]] = set()
        for i, entry in enumerate(v):
            try:
                node = cls._node(entry)
            except ValueError as exc:
                raise ValueError(f"hosts[{i}] {entry!r}: {exc}") from None
            if node in seen:
                raise ValueError(f"hosts[{i}] {entry!r}: listed twice")
            seen.add(node)
        return v

    @classmethod
    def _node(cls, entry: str) -> tuple[str, int]:
        import ipaddress

        if "://" in entry:
            raise ValueError("host:port without a scheme (TLS is mqtt.tls)")
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError("not an IPv6 address in brackets, e.g. [::1]:1883") from None
            sep, port = rest[:1], rest[1:]
        else:
            host, sep, port = entry.rpartition(":")
            if ":" in host:
                raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:1883")
            if not cls._HOSTNAME.match(host):
                raise ValueError("must be host:port, e.g. 127.0.0.1:1883 or mqtt-1.example:1883")
        if sep != ":" or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("the port must be a number from 1 to 65535, e.g. 127.0.0.1:1883")
        return host, int(port)

    def nodes(self) -> list[tuple[str, int]]:
        """The broker's nodes in the order given: `hosts`, or else `host` and `port`."""
        return [self._node(h) for h in self.hosts] if self.hosts else [(self.host, self.port)]


class SmppSection(Section):
    """`[sms.smpp]`: the operator's SMSC (or an in-house gateway) over SMPP 3.4, bound as a transceiver."""

    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1:2775"], max_length=16)
    system_id: str = Field("", max_length=15)  # SMPP 3.4: at most 15 octets
    password: SecretStr = SecretStr("")  # prefer RELAY_SMS__SMPP__PASSWORD
    system_type: str = Field("", max_length=12)
    source_addr: str = Field("", max_length=20)  # a short number or an alphanumeric sender
    enquire_link_s: float = Field(30.0, ge=1, le=600)

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one SMSC, e.g. 127.0.0.1:2775")
        for i, entry in enumerate(v):
            try:
                MqttSection._node(entry)
            except ValueError as exc:
                raise ValueError(f"hosts[{i}] {entry!r}: {str(exc).replace('1883', '2775')}") from None
        return v

    def nodes(self) -> list[tuple[str, int]]:
        return [MqttSection._node(h) for h in self.hosts]


# Twilio's API base, or a gateway that speaks it: scheme and host only (the SDK adds the paths)
API_BASE_URL = re.compile(r"^https?://[^/\s]+/?$")


class SmsSection(Section):
    enabled: bool = False
    # the transport; the SMS themselves (texts, bundles per track, STOP/START, reply acks) are the same for both
    provider: Literal["twilio", "smpp"] = "twilio"
    smpp: SmppSection = Field(default_factory=SmppSection)
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    from_number: str = ""
    api_base_url: str = "https://api.twilio.com"
    validity_period_s: int | None = Field(None, ge=1, le=36000)  # default: escalation.repeat_s
    bundle_window_s: float = Field(0.5, ge=0, le=60)
    timeout_s: float = Field(10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.enabled and self.provider == "smpp":
            missing = ["smpp.system_id"] if not self.smpp.system_id else []
            if not self.smpp.password.get_secret_value():
                missing.append("smpp.password")
            if missing:
                raise ValueError(f"enabled with provider smpp, but {', '.join(missing)} not set")
        elif self.enabled:
            missing = [k for k in ("account_sid", "from_number") if not getattr(self, k)]
            if not self.auth_token.get_secret_value():
                missing.append("auth_token")
            if missing:
                raise ValueError(f"enabled, but {', '.join(missing)} not set")
        if not API_BASE_URL.match(self.api_base_url):
            raise ValueError("api_base_url: must be an http(s) URL with no path")
        return self


class VoiceSection(Section):
    """`[voice]`: calls through Twilio Programmable Voice, acknowledged by a key; the account's keys and API are
    `[sms]`'s unless set here."""

    enabled: bool = False
    from_number: str = ""
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    api_base_url: str = ""
    machine_detection: bool = True  # an answering machine hears the alert but never acknowledges it
    # detection in the background: a person hears the alert the moment they pick up; false for a gateway that only
    # blocks (the person then hears silence for the few seconds the detection takes)
    async_amd: bool = True
    ring_timeout_s: int = Field(30, ge=5, le=600)
    timeout_s: float = Field(10.0, gt=0, le=60)

    @field_validator("from_number")
    @classmethod
    def _from(cls, v: str) -> str:
        return v and check_phone(v)

    @field_validator("api_base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        if v and not API_BASE_URL.match(v):
            raise ValueError("must be an http(s) URL with no path")
        return v


class EmailSection(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str = ""
    password: SecretStr = SecretStr("")
    from_address: Email = "uav-relay@localhost"
    tls: bool = False  # implicit TLS (port 465); starttls upgrades a plain connection instead
    ca_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _one_tls(self) -> Self:
        if self.tls and self.starttls:
            raise ValueError("tls and starttls exclude each other")
        return self


class CanarySection(Section):
    """A periodic test message over each backup channel, so a channel that has rotted is found before the day
    it is needed. Off with interval_s = 0."""

    interval_s: float = Field(0, ge=0)
    sms_to: str = ""  # empty: no SMS canary
    email_to: str = ""

    @field_validator("sms_to")
    @classmethod
    def _phone(cls, v: str) -> str:
        return v and check_phone(v)

    @field_validator("email_to")
    @classmethod
    def _email(cls, v: str) -> str:
        return v and check_email(v)

    @model_validator(mode="after")
    def _targets(self) -> Self:
        if self.interval_s and not (self.sms_to or self.email_to):
            raise ValueError("interval_s set, but neither sms_to nor email_to")
        if self.interval_s and self.interval_s < 60:
            raise ValueError("interval_s: at least 60 (a canary every few seconds is a flood, not a check)")
        return self


class TemplatesSection(Section):
    """Replacements for the built-in texts; fields as in relay.render.FIELDS, e.g. {code}, {place}."""

    sms: str | None = None
    email_subject: str | None = None
    email_text: str | None = None

    @field_validator("sms", "email_subject", "email_text")
    @classmethod
    def _renders(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            check_template(info.field_name or "", v)
        return v

    def overrides(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class EscalationSection(Section):
    ack_timeout_s: float = Field(10, gt=0)
    repeat_s: float = Field(60, gt=0)
    give_up_s: float = Field(900, gt=0)
    # A publish that got no PUBACK is tried again this often while the alert is open.
    retry_s: float = Field(5, gt=0)
    # With [voice] on: calls join the backups this long after the track's first alert, then each backup round.
    voice_after_s: float = Field(60, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.give_up_s <= self.ack_timeout_s:
            raise ValueError("give_up_s must be longer than ack_timeout_s")
        return self


class CotSection(Section):
    """`[cot]`: every track on a TAK map, as Cursor-on-Target events to one listener (CONTRACT.md,
    "Interoperability"; channels/cot.py, relay/engine/cot_feed.py). Off by default."""

    enabled: bool = False
    url: str = "tcp://127.0.0.1:8087"  # tcp://, tls:// (with cert_file and key_file) or udp://host:port
    cert_file: Path | None = None  # tls: the client certificate the TAK server knows the relay by
    key_file: Path | None = None
    ca_file: Path | None = None  # tls: the CA of the server's certificate; none: the system's CAs
    # An event stays fresh until its track would close (tracks.join_window_s after its latest report), and at
    # least this long after it was sent: an open track is sent again before then, so it never greys out.
    stale_margin_s: float = Field(120, ge=10, le=3600)
    callsign_prefix: str = Field("БПЛА", min_length=1, max_length=20)  # the marker's label: prefix + short code
    write_timeout_s: float = Field(5, gt=0, le=60)  # a listener that takes nothing this long is reconnected
    reconnect_max_s: float = Field(5, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from channels.cot import parse_url

        parse_url(v)
        return v

    @field_validator("callsign_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if has_controls(v):
            raise ValueError("contains control characters")
        return v

    @model_validator(mode="after")
    def _files(self) -> Self:
        tls = self.url.startswith("tls://")
        files = {"cert_file": self.cert_file, "key_file": self.key_file, "ca_file": self.ca_file}
        given = [k for k, f in files.items() if f is not None]
        if given and not tls:
            raise ValueError(f"{', '.join(given)}: only for a tls:// url")
        if not self.enabled:
            return self
        if tls and (self.cert_file is None or self.key_file is None):
            raise ValueError("a tls:// url needs cert_file and key_file (the client certificate for the TAK server)")
        for key in given:
            path = files[key]
            assert path is not None
            if not path.is_file():
                raise ValueError(f"{key}: no such file {path}")
        return self


class TracksSection(Section):
    """Reports of one object become one track (CONTRACT.md, "Tracks"). Off by default: v1's one alarm per report."""

    enabled: bool = False
    join_window_s: float = Field(600, gt=0, le=86_400)
    max_speed_kmh: float = Field(250, gt=0, le=5_000)
    position_error_km: float = Field(2.0, ge=0, le=100)


# A CAP `sender` "SHALL NOT include spaces, commas or restricted characters (< and &)" (CAP 1.2, 3.2.1).
CAP_SENDER = r"[^\s,<&]{1,200}"


class CapSection(Section):
    """CAP 1.2 documents of the alerts (CONTRACT.md, "Interoperability"; relay/domain/cap.py)."""

    # Who the documents say they are from: one value for every relay sharing a database (the pair sender,
    # identifier names a document for ever), best a name under the site's own domain.
    sender: str = "uav-relay@localhost"
    # <senderName>: what a person reading the document sees as its author
    sender_name: str = Field("uav-relay, служба 112", min_length=1, max_length=200)
    # GET /api/v1/cap lists alerts accepted at least this long ago: one committed later with an earlier id (a
    # report still being placed on its track, another relay's clock a little behind) is never skipped by a
    # consumer that follows the feed's next link.
    feed_delay_s: float = Field(2.0, ge=0, le=60)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if not re.fullmatch(CAP_SENDER, v):
            raise ValueError("1 to 200 characters without spaces, commas, '<' or '&' (e.g. uav-relay@airfield.example)")
        return v

    @field_validator("sender_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if has_controls(v):
            raise ValueError("contains control characters")
        return v


TILE_URL = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~/{}%-]*(\?[A-Za-z0-9._~/{}%=&-]*)?"


class ConsolesSection(Section):
    """The browser consoles (CONTRACT.md, "Dispatcher console (v2)")."""

    # raster map tiles under the dispatcher's plot, e.g. an internal tile server https://tiles.local/{z}/{x}/{y}.png;
    # empty: the plot alone, nothing fetched from elsewhere (an air-gapped network)
    tile_url: str = ""
    # CSV of places (name, district, lat, lon[, accuracy_m]) for the operator's place field; empty: none
    gazetteer: str = ""

    @field_validator("tile_url")
    @classmethod
    def _tiles(cls, v: str) -> str:
        if not v:
            return v
        # an allowlist, not a blocklist: the value's origin goes into the pages' Content-Security-Policy header
        if not re.fullmatch(TILE_URL, v):
            raise ValueError("an http(s) URL of a tile server, e.g. https://tiles.local/{z}/{x}/{y}.png")
        missing = [p for p in ("{z}", "{x}", "{y}") if p not in v]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (e.g. https://tiles.local/{{z}}/{{x}}/{{y}}.png)")
        return v

    @field_validator("gazetteer")
    @classmethod
    def _places(cls, v: str) -> str:
        if v:
            Gazetteer.load(v)  # a file that cannot be used is a config error now, naming the line
        return v

    def places(self) -> Gazetteer:
        return Gazetteer.load(self.gazetteer) if self.gazetteer else Gazetteer(())

    @property
    def tile_origin(self) -> str:
        m = re.match(r"^https?://[^/]+", self.tile_url)
        return m.group(0) if m else ""


class HasToken(Section):
    id: str = Field(pattern=ID_PATTERN)
    token: SecretStr | None = None
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("at least 16 characters")
        return v

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token or token_sha256")
        return self

    @property
    def token_digest(self) -> str:
        if self.token_sha256 is not None:
            return self.token_sha256
        assert self.token is not None
        return hash_token(self.token.get_secret_value())


class OperatorConfig(HasToken):
    pass


class EngineerConfig(HasToken):
    """An on-call engineer: reads every alert (without the caller) and the audit trail; cannot ack or file."""


class Area(Section):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(gt=0, le=20_000)


class DeskConfig(HasToken):
    name: str = Field("", max_length=200)
    # (extension) the duty officer's phone for people to call (the operator's console shows it when a report is not
    # acknowledged); empty: the desk's first SMS number
    phone: str = ""
    sms: list[str] = Field(default_factory=list)
    email: list[str] = Field(default_factory=list)
    voice: list[str] = Field(default_factory=list)  # numbers to call, in order: the next when one is busy
    area: Area | None = None

    @field_validator("sms", "voice")
    @classmethod
    def _e164(cls, v: list[str]) -> list[str]:
        for number in v:
            check_phone(number)
        return v

    @field_validator("email")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for address in v:
            check_email(address)
        return v

    @field_validator("phone")
    @classmethod
    def _call(cls, v: str) -> str:
        return v and check_phone(v)

    @property
    def call_number(self) -> str:
        return self.phone or (self.sms[0] if self.sms else "")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    relay: RelaySection = RelaySection()
    store: StoreSection = StoreSection()
    http: HttpSection = HttpSection()
    mqtt: MqttSection = MqttSection()
    sms: SmsSection = SmsSection()
    voice: VoiceSection = VoiceSection()
    email: EmailSection = EmailSection()
    escalation: EscalationSection = EscalationSection()
    tracks: TracksSection = TracksSection()
    cot: CotSection = CotSection()
    consoles: ConsolesSection = ConsolesSection()
    cap: CapSection = CapSection()
    templates: TemplatesSection = TemplatesSection()
    canary: CanarySection = CanarySection()
    operators: list[OperatorConfig] = Field(default_factory=list)
    desks: list[DeskConfig] = Field(default_factory=list)
    engineers: list[EngineerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _voice_account(self) -> Self:
        v = self.voice
        if v.enabled:
            missing = [k for k, have in (("from_number", v.from_number),
                                         ("account_sid", v.account_sid or self.sms.account_sid),
                                         ("auth_token", (v.auth_token.get_secret_value()
                                                         or self.sms.auth_token.get_secret_value())))
                       if not have]
            if missing:
                raise ValueError(f"voice: enabled, but {', '.join(missing)} not set (here or in [sms])")
        return self

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for kind, ids in (("operators", [o.id for o in self.operators]), ("desks", [d.id for d in self.desks])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate id {', '.join(dupes)}")
        shared = sorted({o.id for o in self.operators} & {d.id for d in self.desks})
        if shared:  # they are MQTT user names too: the broker's ACL tells them apart by name
            raise ValueError(f"an operator and a desk share the id {', '.join(shared)}")
        digests = [p.token_digest for p in [*self.operators, *self.desks, *self.engineers]]
        if len(set(digests)) != len(digests):
            raise ValueError("two operators or desks share one token")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content comes in as init values; the environment overrides it.
        return env_settings, init_settings


class ConfigError(Exception):
    """Every problem found, each as `key.path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """`path`, else `$RELAY_CONFIG`, else built-in defaults; raises ConfigError naming each bad key."""
    if path is None:
        path = os.environ.get("RELAY_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None


def _describe(err: Any) -> str:
    key = ""
    for part in err["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{key or '(top level)'}: {msg}"
