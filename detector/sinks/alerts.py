"""SOC alerts: the rules that turn usage events and health snapshots into alerts.

Pure decision logic: no I/O, no threads. `AlertEngine.handle(event)` runs once per event
(flow end or DNS lookup) and `AlertEngine.check_health(snapshot)` runs periodically; each
alert that passes deduplication (same rule and key within the rule's window) and the rule's
token bucket goes to `emit`. Windows follow event time, so replaying a capture raises the same
alerts, with the same ids, as watching it live. Delivery lives in `alert_transports`, the
formats in `alert_format`, and `soc` wires them together.

Every alert names the client only by its pseudonym (the event's `client` field), never by
address.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detector.config import (  # noqa: F401 - re-exported: the alert settings live in the one Config
    ALERT_CHOICES,
    SEVERITIES,
    AlertFileConfig,
    AlertsConfig,
    SyslogConfig,
    WebhookConfig,
)
from detector.model import EventKind, Policy, Stats, UsageEvent

# ---------------------------------------------------------------------------
# Rules, severities
# ---------------------------------------------------------------------------

FIRST_USE = "unsanctioned-first-use"
LARGE_UPLOAD = "large-upload"
NEW_CANDIDATE = "new-ai-candidate"
ENCRYPTED_DNS = "encrypted-dns"
SENSOR_BLIND = "sensor-blind"

# Stable rule id -> the name a SOC analyst reads (CEF Name, ECS rule.name).
RULES: dict[str, str] = {
    FIRST_USE: "First use of an unsanctioned AI service",
    LARGE_UPLOAD: "Large upload to an AI service",
    NEW_CANDIDATE: "New AI-looking name not in the catalogue",
    ENCRYPTED_DNS: "Traffic to a public encrypted-DNS resolver",
    SENSOR_BLIND: "Sensor is going blind",
}

_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# Large uploads: how bad it is depends on what the municipality decided about the service.
UPLOAD_SEVERITY = {
    Policy.SANCTIONED.value: "low",
    Policy.TOLERATED.value: "medium",
    Policy.UNSANCTIONED.value: "high",
    Policy.BLOCKED.value: "critical",  # the block did not hold and data left
}

# Keys remembered per rule for deduplication. Keys carry their day or hour, so this only
# bounds memory on a network with very many departments x services x clients.
MAX_DEDUP_KEYS = 100_000
# (client, service, hour) upload sums kept for the per-client-hour threshold.
MAX_UPLOAD_KEYS = 100_000

# Health snapshots kept for the sensor-blind window: one every few seconds over minutes.
MAX_HEALTH_SNAPSHOTS = 10_000

DAY = 86_400.0
HOUR = 3_600.0


# ---------------------------------------------------------------------------
# Configuration (the `alerts:` section of the config file)
# ---------------------------------------------------------------------------


def check_config(cfg: AlertsConfig) -> list[str]:
    """Problems in an AlertsConfig as `alerts.key: problem` lines (empty = fine)."""
    problems = []
    for rule in cfg.rules:
        if rule not in RULES:
            problems.append(f"alerts.rules: unknown rule {rule!r} (one of: {', '.join(RULES)})")
    policies = {p.value for p in Policy}
    for key in ("first_use_policies", "upload_policies"):
        for p in getattr(cfg, key):
            if p not in policies:
                problems.append(f"alerts.{key}: unknown policy {p!r} (one of: {', '.join(sorted(policies))})")
    for dotted, choices in ALERT_CHOICES.items():
        obj: Any = cfg
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)
        if obj not in choices:
            problems.append(f"{dotted}: must be one of {', '.join(choices)}, not {obj!r}")
    if not 0 <= cfg.syslog.facility <= 23:
        problems.append("alerts.syslog.facility: must be 0..23")
    for key in ("blind_drop_share", "blind_flow_share"):
        if not 0 < getattr(cfg, key) <= 1:
            problems.append(f"alerts.{key}: must be a share in (0, 1]")
    if cfg.webhook.url and not cfg.webhook.url.startswith(("http://", "https://")):
        problems.append("alerts.webhook.url: must start with http:// or https://")
    if cfg.syslog.address and ":" not in cfg.syslog.address:
        problems.append("alerts.syslog.address: expected HOST:PORT")
    return problems


# ---------------------------------------------------------------------------
# The alert record
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One SOC alert, as every output renders it.

    id: deterministic (rule, sensor and dedup key), so a receiver can drop repeats.
    ts: ISO 8601 UTC of the event (or health check) that raised it.
    client: the client's pseudonym, never an address; "" when no client is involved.
    evidence: the facts behind the alert (names, byte counts, thresholds, shares).
    """

    id: str
    rule: str
    severity: str
    ts: str
    sensor: str
    message: str
    department: str = ""
    service: str = ""
    vendor: str = ""
    category: str = ""
    jurisdiction: str = ""
    policy: str = ""
    client: str = ""
    server_name: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rule_name(self) -> str:
        """The rule's human name."""
        return RULES.get(self.rule, self.rule)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the webhook body and the spool format)."""
        return {
            "id": self.id,
            "rule": self.rule,
            "rule_name": self.rule_name,
            "severity": self.severity,
            "ts": self.ts,
            "sensor": self.sensor,
            "message": self.message,
            "department": self.department,
            "service": self.service,
            "vendor": self.vendor,
            "category": self.category,
            "jurisdiction": self.jurisdiction,
            "policy": self.policy,
            "client": self.client,
            "server_name": self.server_name,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """The inverse of to_dict (unknown keys ignored)."""
        names = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in names})


# Alert fields copied from the event that raised it (`client` is the pseudonym).
_FROM_EVENT = ("department", "service", "vendor", "category", "jurisdiction", "policy", "client", "server_name")


def _destination(ev: UsageEvent) -> dict[str, Any]:
    """The evidence every flow-based alert carries about where the traffic went."""
    return {
        "server_name": ev.server_name,
        "server_ip": ev.server_ip,
        "server_port": ev.server_port,
        "transport": ev.transport,
        "evidence": ev.evidence,
    }


def alert_id(sensor: str, rule: str, *key: object) -> str:
    """A stable id: the same rule, sensor and key give the same id on every run."""
    text = "\x1f".join([sensor, rule, *(str(k) for k in key)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def iso_utc(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(ts: str) -> float | None:
    """An event's ISO 8601 timestamp as epoch seconds (naive = UTC); None if it does not parse."""
    try:
        moment = datetime.fromisoformat(ts)
    except (ValueError, TypeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ---------------------------------------------------------------------------
# Building blocks: dedup memory, token bucket
# ---------------------------------------------------------------------------


class _Seen:
    """Keys raised recently, each until an expiry (event time); bounded, oldest forgotten first."""

    __slots__ = ("_keys", "_max")

    def __init__(self, max_keys: int = MAX_DEDUP_KEYS) -> None:
        self._keys: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._max = max_keys

    def active(self, key: tuple[Any, ...], now: float) -> bool:
        """Whether `key` was marked and has not expired at `now`."""
        until = self._keys.get(key)
        return until is not None and until > now

    def mark(self, key: tuple[Any, ...], until: float) -> None:
        """Remember `key` until `until`."""
        keys = self._keys
        keys[key] = until
        keys.move_to_end(key)
        while len(keys) > self._max:
            keys.popitem(last=False)

    def __len__(self) -> int:
        return len(self._keys)


class TokenBucket:
    """`rate` tokens per second up to `burst`; one token per alert (wall-clock time)."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ---------------------------------------------------------------------------
# Health snapshots for sensor-blind
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class HealthSnapshot:
    """Cumulative counters at one moment, for the sensor-blind rule.

    ts: Unix time of the snapshot (wall clock for a live sensor).
    packets: packets received by the capture (or decoded, without capture stats).
    drops: packets lost in the kernel or the interface.
    flows: TLS/QUIC/HTTP flows judged for visibility (named + dns_only + blind).
    blind: of those, flows the sensor could not name.
    """

    ts: float
    packets: int
    drops: int
    flows: int
    blind: int

    @classmethod
    def take(
        cls, stats: Stats, capture: Mapping[str, tuple[int, int, int]] | None = None, ts: float | None = None
    ) -> HealthSnapshot:
        """Read a snapshot from the pipeline's Stats and the per-interface capture counters
        ({iface: (packets, kernel_drops, if_drops)})."""
        if capture:
            packets = sum(v[0] for v in capture.values())
            drops = sum(v[1] + v[2] for v in capture.values())
        else:
            packets, drops = stats.packets, 0
        blind = sum(dict(stats.flows_blind).values())
        flows = stats.flows_named + stats.flows_dns_only + blind
        return cls(time.time() if ts is None else ts, packets, drops, flows, blind)


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


class AlertEngine:
    """Applies the alert rules; emits each alert once per rule window and within the rate limit.

    Not thread-safe by itself; `soc.AlertService` serialises calls.
    """

    def __init__(
        self,
        cfg: AlertsConfig,
        sensor: str,
        emit: Callable[[Alert], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.sensor = sensor
        self.emit = emit
        enabled = set(cfg.rules) if cfg.enabled else set()
        self.enabled = frozenset(enabled)
        self.min_rank = _RANK.get(cfg.min_severity, 0)
        self.first_use_policies = frozenset(cfg.first_use_policies)
        self.upload_policies = frozenset(cfg.upload_policies)
        self._seen = {rule: _Seen() for rule in RULES}
        self._buckets = {rule: TokenBucket(cfg.rate_per_minute / 60.0, cfg.rate_burst, clock) for rule in RULES}
        self._uploads: dict[tuple[str, str, int], int] = {}  # (client, service, hour) -> bytes up
        self._upload_hour = 0
        self._health: deque[HealthSnapshot] = deque(maxlen=MAX_HEALTH_SNAPSHOTS)
        self.counts: dict[tuple[str, str], int] = {}  # (rule, severity) -> alerts emitted
        self.rate_limited: dict[str, int] = {}  # rule -> alerts held back by the token bucket

    # -- events ------------------------------------------------------------------

    def handle(self, ev: UsageEvent) -> None:
        """Apply the event rules to one usage event."""
        kind = ev.kind
        enabled = self.enabled
        if ev.service and kind in (EventKind.FLOW.value, EventKind.DNS.value):
            if FIRST_USE in enabled and ev.policy in self.first_use_policies:
                self._first_use(ev)
            if (
                LARGE_UPLOAD in enabled
                and kind == EventKind.FLOW.value
                and ev.bytes_up
                and ev.policy in self.upload_policies
            ):
                self._large_upload(ev)
        elif kind == EventKind.ENCRYPTED_DNS.value and ENCRYPTED_DNS in enabled:
            self._encrypted_dns(ev)
        elif kind == EventKind.CANDIDATE.value and NEW_CANDIDATE in enabled:
            self._candidate(ev)

    def _first_use(self, ev: UsageEvent) -> None:
        now = parse_ts(ev.ts)
        if now is None:
            return
        day = int(now // DAY)
        key = (ev.department, ev.service, day)
        if self._seen[FIRST_USE].active(key, now):
            return
        severity = "high" if ev.policy == Policy.BLOCKED.value else "medium"
        day_text = iso_utc(day * DAY)[:10]
        alert = self._alert(
            FIRST_USE,
            severity,
            ev,
            key,
            f"First use on {day_text} of {ev.policy} AI service {ev.service} ({ev.vendor}, {ev.jurisdiction}) "
            f"by department {ev.department}",
            {"day": day_text, "event_kind": ev.kind, "evidence": ev.evidence, "server_name": ev.server_name},
        )
        self._raise(alert, key, (day + 1) * DAY, now)

    def _large_upload(self, ev: UsageEvent) -> None:
        now = parse_ts(ev.ts)
        if now is None:
            return
        cfg = self.cfg
        hour = int(now // HOUR)
        if hour > self._upload_hour:
            self._upload_hour = hour
            # Sums of earlier hours can no longer cross the threshold in their own hour,
            # except for flows that end late; keep the previous hour for those.
            for k in [k for k in self._uploads if k[2] < hour - 1]:
                del self._uploads[k]
        ukey = (ev.client, ev.service, hour)
        total = self._uploads.get(ukey, 0) + ev.bytes_up
        if len(self._uploads) < MAX_UPLOAD_KEYS or ukey in self._uploads:
            self._uploads[ukey] = total
        if ev.bytes_up > cfg.upload_flow_bytes:
            scope, amount, threshold = "flow", ev.bytes_up, cfg.upload_flow_bytes
        elif total > cfg.upload_client_hour_bytes:
            scope, amount, threshold = "client-hour", total, cfg.upload_client_hour_bytes
        else:
            return
        key = (ev.client, ev.service, hour)
        if self._seen[LARGE_UPLOAD].active(key, now):
            return
        severity = UPLOAD_SEVERITY.get(ev.policy, "medium")
        what = "in one flow" if scope == "flow" else "within one hour"
        alert = self._alert(
            LARGE_UPLOAD,
            severity,
            ev,
            key,
            f"{amount} bytes sent {what} to {ev.policy} AI service {ev.service} ({ev.vendor}, {ev.jurisdiction}) "
            f"from department {ev.department}",
            {
                "scope": scope,
                "bytes_up": amount,
                "threshold_bytes": threshold,
                "flow_bytes_up": ev.bytes_up,
                "hour": iso_utc(hour * HOUR)[:13] + ":00Z",
                **_destination(ev),
            },
        )
        self._raise(alert, key, (hour + 1) * HOUR, now)

    def _encrypted_dns(self, ev: UsageEvent) -> None:
        now = parse_ts(ev.ts)
        if now is None:
            return
        day = int(now // DAY)
        key = (ev.department, day)
        if self._seen[ENCRYPTED_DNS].active(key, now):
            return
        resolver = ev.service or ev.server_name or ev.server_ip
        alert = self._alert(
            ENCRYPTED_DNS,
            "low",
            ev,
            key,
            f"Department {ev.department} uses public encrypted-DNS resolver {resolver}: "
            "its DNS is invisible to the sensor and to the municipality's resolvers",
            {"resolver": resolver, **_destination(ev)},
        )
        self._raise(alert, key, (day + 1) * DAY, now)

    def _candidate(self, ev: UsageEvent) -> None:
        name = ev.server_name
        if not name:
            return
        key = (name,)
        if self._seen[NEW_CANDIDATE].active(key, 0.0):
            return
        alert = self._alert(
            NEW_CANDIDATE,
            "low",
            ev,
            key,
            f"AI-looking name {name} is not in the catalogue; review it for the catalogue or the policy",
            {"server_name": name, "pattern": ev.pattern, "evidence": ev.evidence, "event_kind": ev.kind},
        )
        self._raise(alert, key, float("inf"), 0.0)

    # -- health ------------------------------------------------------------------

    def check_health(self, snap: HealthSnapshot) -> None:
        """Compare `snap` with the snapshot one window earlier; alert when the sensor loses
        packets (kernel/interface drops) or cannot name its flows."""
        history = self._health
        history.append(snap)
        start = snap.ts - self.cfg.blind_window
        while len(history) > 1 and history[1].ts <= start:
            history.popleft()
        base = history[0]
        if base is snap or SENSOR_BLIND not in self.enabled:
            return
        cfg = self.cfg
        span = snap.ts - base.ts
        packets, drops = snap.packets - base.packets, snap.drops - base.drops
        flows, blind = snap.flows - base.flows, snap.blind - base.blind
        seen = packets + drops
        if seen >= cfg.blind_min_packets and drops > 0 and drops / seen > cfg.blind_drop_share:
            self._blind(
                snap,
                "drops",
                "high",
                drops / seen,
                cfg.blind_drop_share,
                span,
                {"packets": packets, "dropped": drops},
                f"Sensor {self.sensor} lost {drops / seen:.1%} of packets in the last {span:.0f} s "
                "(kernel or interface drops): AI use may go unseen",
            )
        if flows >= cfg.blind_min_flows and blind / flows > cfg.blind_flow_share:
            self._blind(
                snap,
                "blind-flows",
                "medium",
                blind / flows,
                cfg.blind_flow_share,
                span,
                {"flows": flows, "blind_flows": blind},
                f"Sensor {self.sensor} could not name {blind / flows:.1%} of TLS/QUIC/HTTP flows in the "
                f"last {span:.0f} s (ECH, encrypted DNS, mid-flow starts)",
            )

    def _blind(
        self,
        snap: HealthSnapshot,
        reason: str,
        severity: str,
        share: float,
        threshold: float,
        span: float,
        counts: dict[str, int],
        message: str,
    ) -> None:
        key = (reason,)
        if self._seen[SENSOR_BLIND].active(key, snap.ts):
            return
        evidence = {
            "reason": reason,
            "share": round(share, 6),
            "threshold": threshold,
            "window_seconds": round(span, 3),
            **counts,
        }
        alert = Alert(
            id=alert_id(
                self.sensor,
                SENSOR_BLIND,
                reason,
                int(snap.ts // self.cfg.blind_repeat) if self.cfg.blind_repeat else snap.ts,
            ),
            rule=SENSOR_BLIND,
            severity=severity,
            ts=iso_utc(snap.ts),
            sensor=self.sensor,
            message=message,
            evidence=evidence,
        )
        self._raise(alert, key, snap.ts + self.cfg.blind_repeat, snap.ts)

    # -- common ------------------------------------------------------------------

    def _alert(
        self, rule: str, severity: str, ev: UsageEvent, key: tuple[Any, ...], message: str, evidence: dict[str, Any]
    ) -> Alert:
        return Alert(
            id=alert_id(self.sensor, rule, *key),
            rule=rule,
            severity=severity,
            ts=ev.ts,
            sensor=self.sensor,
            message=message,
            evidence=evidence,
            **{name: getattr(ev, name) for name in _FROM_EVENT},
        )

    def _raise(self, alert: Alert, key: tuple[Any, ...], until: float, now: float) -> None:
        if _RANK.get(alert.severity, 0) < self.min_rank:
            self._seen[alert.rule].mark(key, until)  # below the bar: do not look again this window
            return
        if not self._buckets[alert.rule].take():
            # Not marked as seen: a later event with the same key may still raise it.
            self.rate_limited[alert.rule] = self.rate_limited.get(alert.rule, 0) + 1
            return
        self._seen[alert.rule].mark(key, until)
        ck = (alert.rule, alert.severity)
        self.counts[ck] = self.counts.get(ck, 0) + 1
        self.emit(alert)
