"""Prometheus metrics of the sensor: plain counters on the event path, one Collector at scrape time.

The event path (`UsageMetrics.handle`, once per finished flow or DNS lookup) only bumps dict
entries. Everything else — the pipeline's `Stats`, capture counters, table sizes, the store
writer, the rule set, the alert sinks — is read when Prometheus scrapes, through the small
interfaces below, and translated into metric families by `UsageMetrics.collect`. The registry is
injected; nothing here touches prometheus_client's global REGISTRY.

Cardinality is bounded by construction: labels come only from the catalogue (service, vendor,
category, jurisdiction), the policy (policy, department), anomaly and blind-reason names,
interface names, rule ids and sink names. No label ever carries a client, an address or a
hostname; distinct clients are counted, never named.
"""

from __future__ import annotations

import logging
import platform
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from detector import __version__
from detector.model import EventKind, Stats, UsageEvent

log = logging.getLogger(__name__)

# Labels of the AI usage counters, in key-tuple order.
AI_LABELS = ("service", "vendor", "category", "jurisdiction", "policy", "department")

# Distinct (service, department, client) entries remembered for the active-clients gauge.
# 65 536 covers a municipality of a few thousand staff using dozens of services; beyond it the
# least recently seen entries go first, so the gauge undercounts rather than grows memory.
MAX_ACTIVE_ENTRIES = 65_536

# Default sliding window of the active-clients gauge (event time, seconds): 15 minutes
# matches a Grafana panel refresh and what "using it right now" means to a CISO.
DEFAULT_ACTIVE_WINDOW = 900.0

# Batch write latency buckets (seconds): a DuckDB batch of a few thousand rows takes
# milliseconds on an SSD and seconds on a struggling SD card; both ends must be visible.
WRITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Sampled writes recorded per scrape when the writer has no per-batch hook: a 15 s scrape
# sees about 8 writes at the default 2 s flush interval; far more means a burst, not detail.
MAX_SAMPLED_WRITES = 1000

_FLOW = EventKind.FLOW.value
_DNS = EventKind.DNS.value
_ENCRYPTED_DNS = EventKind.ENCRYPTED_DNS.value
_CANDIDATE = EventKind.CANDIDATE.value


# ---------------------------------------------------------------------------
# What the daemon hands in (read at scrape time only)
# ---------------------------------------------------------------------------

# {interface: (packets received, kernel drops, interface drops)}, cumulative since start.
CaptureStatsFn = Callable[[], Mapping[str, tuple[int, int, int]]]
# (flows in the flow table, entries in the DNS answer cache), right now.
TableSizesFn = Callable[[], tuple[int, int]]


class StoreStats(Protocol):
    """The store's batch writer (detector.sinks.store.BatchWriter) as the metrics see it:
    cumulative counters read at scrape time."""

    events_written: int  # events committed to the database since start
    dropped: int  # events dropped because the in-memory backlog was full
    writes_total: int  # batch writes completed
    last_write_seconds: float  # duration of the latest batch write

    def backlog(self) -> int:
        """Events accepted but not yet written."""
        ...


class AlertStats(Protocol):
    """The alert engine and its delivery sinks as the metrics see them."""

    def alert_counts(self) -> Mapping[tuple[str, str], int]:
        """(rule, severity) -> alerts raised since start."""
        ...

    def delivery_counts(self) -> Mapping[tuple[str, str], int]:
        """(sink, result) -> delivery outcomes since start."""
        ...

    def spool_sizes(self) -> Mapping[str, int]:
        """sink -> alerts waiting in its on-disk spool."""
        ...


@dataclass(slots=True)
class RulesState:
    """The rule set in force; the daemon updates the fields in place on every reload.

    version: catalogue (and policy) version label, e.g. "2025.06+policy-3".
    services: services in the catalogue.
    last_reload_success: whether the last load or SIGHUP reload succeeded.
    last_reload_timestamp: Unix time of that attempt (0 = never).
    """

    version: str = ""
    services: int = 0
    last_reload_success: bool = True
    last_reload_timestamp: float = 0.0


class LatencyHistogram:
    """A plain, thread-safe histogram for the store writer thread to observe batch write times.

    The writer calls `observe(seconds)` once per batch; the collector reads a snapshot.
    """

    __slots__ = ("_count", "_counts", "_lock", "_sum", "buckets")

    def __init__(self, buckets: tuple[float, ...] = WRITE_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # last slot: above every bound (+Inf only)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one batch write that took `seconds`."""
        i = bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds
            self._count += 1

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for bound, n in zip(self.buckets, counts):
            acc += n
            out.append((_float_text(bound), acc))
        out.append(("+Inf", acc + counts[-1]))
        return out, total


def _float_text(value: float) -> str:
    return repr(float(value))


# ---------------------------------------------------------------------------
# Event-path counters and the Collector
# ---------------------------------------------------------------------------


class UsageMetrics:
    """Counts events and exposes them, with the pipeline's and the daemon's counters, on scrape.

    Register the instance itself as a Collector: `registry.register(metrics)`.
    Every source but `stats` is optional; an absent source's metrics are simply not exposed.
    """

    def __init__(
        self,
        stats: Stats,
        *,
        capture: CaptureStatsFn | None = None,
        tables: TableSizesFn | None = None,
        store: StoreStats | None = None,
        rules: RulesState | None = None,
        alerts: AlertStats | None = None,
        active_window: float = DEFAULT_ACTIVE_WINDOW,
        max_active_entries: int = MAX_ACTIVE_ENTRIES,
        version: str = __version__,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stats = stats
        self.capture = capture
        self.tables = tables
        self.store = store
        self.rules = rules
        self.alerts = alerts
        self.active_window = active_window
        self.max_active_entries = max_active_entries
        self.version = version
        # Live capture passes time.time so that clients age out while the network is quiet;
        # a replay passes None and the window follows the capture's own clock.
        self.clock = clock
        self.store_latency = LatencyHistogram()
        self._write_hooked = False
        self._writes_seen = 0
        # Event path: 6-tuples of AI_LABELS -> counters.
        self.ai_flows: dict[tuple[str, ...], int] = {}
        self.ai_dns: dict[tuple[str, ...], int] = {}
        self.ai_bytes_up: dict[tuple[str, ...], int] = {}
        self.ai_bytes_down: dict[tuple[str, ...], int] = {}
        self.encrypted_dns: dict[str, int] = {}
        self.candidates = 0
        # (service, department, client) -> last seen (event time), least recently seen first.
        self._active: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._groups: set[tuple[str, str]] = set()  # (service, department) ever seen
        self._watermark = 0.0  # latest event time seen: "now" for the sliding window
        self.active_evictions = 0
        self.scrape_errors: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _active between the event path and scrapes

    # -- event path ------------------------------------------------------------

    def handle(self, ev: UsageEvent) -> None:
        """Count one event (called once per finished flow or DNS lookup)."""
        kind = ev.kind
        if ev.service:
            if kind == _FLOW:
                key = (ev.service, ev.vendor, ev.category, ev.jurisdiction, ev.policy, ev.department)
                self.ai_flows[key] = self.ai_flows.get(key, 0) + 1
                self.ai_bytes_up[key] = self.ai_bytes_up.get(key, 0) + ev.bytes_up
                self.ai_bytes_down[key] = self.ai_bytes_down.get(key, 0) + ev.bytes_down
                self._seen(ev, ev.duration)
                return
            if kind == _DNS:
                key = (ev.service, ev.vendor, ev.category, ev.jurisdiction, ev.policy, ev.department)
                self.ai_dns[key] = self.ai_dns.get(key, 0) + 1
                self._seen(ev, 0.0)
                return
        if kind == _ENCRYPTED_DNS:
            self.encrypted_dns[ev.department] = self.encrypted_dns.get(ev.department, 0) + 1
        elif kind == _CANDIDATE:
            self.candidates += 1

    def _seen(self, ev: UsageEvent, duration: float) -> None:
        # A flow event carries its start time; the client was active until start + duration,
        # which matters for long flows reported at their (active-timeout) end.
        try:
            last = datetime.fromisoformat(ev.ts).timestamp() + duration
        except (ValueError, TypeError):
            return
        key = (ev.service, ev.department, ev.client)
        active = self._active
        with self._lock:
            self._watermark = max(self._watermark, last)
            old = active.get(key)
            if old is None:
                self._groups.add((ev.service, ev.department))
                active[key] = last
                if len(active) > self.max_active_entries:
                    active.popitem(last=False)
                    self.active_evictions += 1
            else:
                if last > old:
                    active[key] = last
                active.move_to_end(key)

    def observe_store_write(self, seconds: float) -> None:
        """Record one database batch write, if the store writer can call a hook per batch.

        Without the hook the collector samples the writer at scrape time instead: the
        histogram's count stays exact, but every write since the previous scrape is
        recorded with the latest write's duration.
        """
        self._write_hooked = True
        self.store_latency.observe(seconds)

    def _sample_store_writes(self, store: StoreStats) -> None:
        done = store.writes_total
        new = done - self._writes_seen
        self._writes_seen = done
        if new > 0 and not self._write_hooked:
            seconds = store.last_write_seconds
            for _ in range(min(new, MAX_SAMPLED_WRITES)):
                self.store_latency.observe(seconds)

    # -- scrape ----------------------------------------------------------------

    def active_clients(self) -> dict[tuple[str, str], int]:
        """Distinct clients per (service, department) seen in the last `active_window` seconds
        of event time; forgets older entries. Groups seen before but idle now report 0."""
        now = self._watermark if self.clock is None else max(self._watermark, self.clock())
        with self._lock:
            cutoff = now - self.active_window
            counts = dict.fromkeys(self._groups, 0)
            expired = []
            for key, last in self._active.items():
                if last < cutoff:
                    expired.append(key)
                else:
                    group = (key[0], key[1])
                    counts[group] += 1
            for key in expired:
                del self._active[key]
        return counts

    def collect(self) -> Iterator[Metric]:
        """Translate every counter into metric families (prometheus_client Collector protocol)."""
        yield from self._build_info()
        for name, section in (
            ("pipeline", self._pipeline),
            ("usage", self._usage),
            ("capture", self._capture),
            ("tables", self._tables),
            ("store", self._store),
            ("rules", self._rules),
            ("alerts", self._alerts),
        ):
            try:
                # Build the whole section first so a failing source yields nothing half-made.
                families = list(section())
            except Exception:  # a broken source must never break the scrape
                log.exception("metrics: collecting %s failed", name)
                self.scrape_errors[name] = self.scrape_errors.get(name, 0) + 1
                continue
            yield from families
        errors = CounterMetricFamily(
            "shadowai_scrape_errors_total", "Metric sources that raised while being collected.", labels=["source"]
        )
        for name, n in sorted(self.scrape_errors.items()):
            errors.add_metric([name], n)
        yield errors

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("shadowai_build_info", "Sensor version; always 1.", labels=["version", "python"])
        info.add_metric([self.version, platform.python_version()], 1)
        yield info

    def _pipeline(self) -> Iterator[Metric]:
        s = self.stats
        yield _counter("shadowai_decoded_packets_total", "Packets handed to the decoders.", s.packets)
        anomalies = CounterMetricFamily(
            "shadowai_decode_anomalies_total", "Malformed inputs by stable anomaly name.", labels=["kind"]
        )
        for kind, n in sorted(dict(s.anomalies).items()):
            anomalies.add_metric([kind], n)
        yield anomalies
        yield _counter("shadowai_flows_total", "Flows reported by the flow table.", s.flows_total)
        yield _counter(
            "shadowai_flow_table_evictions_total", "Flows evicted because the flow table was full.", s.flows_evicted
        )
        yield _counter(
            "shadowai_dns_cache_evictions_total",
            "DNS answers evicted because the cache was full.",
            s.dns_cache_evictions,
        )
        yield _counter(
            "shadowai_handshake_buffer_overflows_total",
            "Handshakes larger than the per-flow reassembly buffer.",
            s.reassembly_overflows,
        )
        vis = CounterMetricFamily(
            "shadowai_visibility_flows_total",
            "TLS/QUIC/HTTP flows by how they were named: named (own SNI/Host), dns_only (DNS cache), blind.",
            labels=["visibility", "reason"],
        )
        vis.add_metric(["named", ""], s.flows_named)
        vis.add_metric(["dns_only", ""], s.flows_dns_only)
        for reason, n in sorted(dict(s.flows_blind).items()):
            vis.add_metric(["blind", reason], n)
        yield vis

    def _usage(self) -> Iterator[Metric]:
        flows = CounterMetricFamily("shadowai_ai_flows_total", "Flows to AI services.", labels=list(AI_LABELS))
        for key, n in dict(self.ai_flows).items():
            flows.add_metric(list(key), n)
        yield flows
        lookups = CounterMetricFamily(
            "shadowai_ai_dns_lookups_total", "DNS lookups of AI service names.", labels=list(AI_LABELS)
        )
        for key, n in dict(self.ai_dns).items():
            lookups.add_metric(list(key), n)
        yield lookups
        data = CounterMetricFamily(
            "shadowai_ai_bytes_total",
            "IP bytes of flows to AI services; up = client to service.",
            labels=[*AI_LABELS, "direction"],
        )
        for key, n in dict(self.ai_bytes_up).items():
            data.add_metric([*key, "up"], n)
        for key, n in dict(self.ai_bytes_down).items():
            data.add_metric([*key, "down"], n)
        yield data
        active = GaugeMetricFamily(
            "shadowai_ai_active_clients",
            f"Distinct clients that used a service in the last {self.active_window:g} s of traffic time.",
            labels=["service", "department"],
        )
        for (service, department), n in sorted(self.active_clients().items()):
            active.add_metric([service, department], n)
        yield active
        edns = CounterMetricFamily(
            "shadowai_encrypted_dns_flows_total",
            "Flows to public DoH/DoT resolvers (DNS the sensor cannot read).",
            labels=["department"],
        )
        for department, n in sorted(dict(self.encrypted_dns).items()):
            edns.add_metric([department], n)
        yield edns
        yield _counter(
            "shadowai_candidate_names_total", "AI-looking names seen that are not in the catalogue.", self.candidates
        )

    def _capture(self) -> Iterator[Metric]:
        if self.capture is None:
            return
        per_if = dict(self.capture())
        packets = CounterMetricFamily(
            "shadowai_capture_packets_total", "Packets received by the capture.", labels=["interface"]
        )
        kernel = CounterMetricFamily(
            "shadowai_capture_kernel_drops_total",
            "Packets dropped by the kernel because the capture buffer was full.",
            labels=["interface"],
        )
        ifdrops = CounterMetricFamily(
            "shadowai_capture_interface_drops_total",
            "Packets dropped by the interface or driver.",
            labels=["interface"],
        )
        for name, (recv, drop, ifdrop) in sorted(per_if.items()):
            packets.add_metric([name], recv)
            kernel.add_metric([name], drop)
            ifdrops.add_metric([name], ifdrop)
        yield packets
        yield kernel
        yield ifdrops

    def _tables(self) -> Iterator[Metric]:
        if self.tables is None:
            return
        flows, dns = self.tables()
        yield GaugeMetricFamily("shadowai_flow_table_flows", "Flows in the flow table now.", value=flows)
        yield GaugeMetricFamily("shadowai_dns_cache_entries", "Answers in the DNS cache now.", value=dns)

    def _store(self) -> Iterator[Metric]:
        store = self.store
        if store is not None:
            self._sample_store_writes(store)
        buckets, total = self.store_latency.snapshot()
        yield HistogramMetricFamily(
            "shadowai_store_write_duration_seconds",
            "Time to write one batch of events to the database.",
            buckets=buckets,
            sum_value=total,
        )
        if store is None:
            return
        yield GaugeMetricFamily(
            "shadowai_store_backlog_events", "Events waiting in memory for the database writer.", value=store.backlog()
        )
        yield _counter("shadowai_store_events_written_total", "Events written to the database.", store.events_written)
        yield _counter(
            "shadowai_store_events_dropped_total", "Events dropped because the writer backlog was full.", store.dropped
        )

    def _rules(self) -> Iterator[Metric]:
        r = self.rules
        if r is None:
            return
        info = InfoMetricFamily("shadowai_rules", "Version of the rule set in force.", labels=["version"])
        info.add_metric([r.version], {})
        yield info
        yield GaugeMetricFamily("shadowai_rules_services", "Services in the catalogue in force.", value=r.services)
        yield GaugeMetricFamily(
            "shadowai_rules_last_reload_success",
            "1 if the last rule load or reload succeeded, else 0 (the previous rules stay in force).",
            value=1 if r.last_reload_success else 0,
        )
        yield GaugeMetricFamily(
            "shadowai_rules_last_reload_timestamp_seconds",
            "Unix time of the last rule load or reload attempt.",
            value=r.last_reload_timestamp,
        )

    def _alerts(self) -> Iterator[Metric]:
        a = self.alerts
        if a is None:
            return
        raised = CounterMetricFamily("shadowai_alerts_total", "SOC alerts raised.", labels=["rule", "severity"])
        for (rule, severity), n in sorted(dict(a.alert_counts()).items()):
            raised.add_metric([rule, severity], n)
        yield raised
        deliveries = CounterMetricFamily(
            "shadowai_alert_deliveries_total",
            "Alert delivery attempts by sink and result (ok, retry, rejected, dropped).",
            labels=["sink", "result"],
        )
        for (sink, result), n in sorted(dict(a.delivery_counts()).items()):
            deliveries.add_metric([sink, result], n)
        yield deliveries
        spool = GaugeMetricFamily(
            "shadowai_alert_spool_events", "Alerts waiting on disk for their sink.", labels=["sink"]
        )
        for sink, n in sorted(dict(a.spool_sizes()).items()):
            spool.add_metric([sink], n)
        yield spool


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


# ---------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[V6]:PORT" (port 0 = any free port); ValueError names the problem."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics listen address {listen!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def serve(listen: str, registry: CollectorRegistry) -> Any:
    """Serve /metrics of `registry` on a daemon thread; returns the server (`.server_address`,
    `.shutdown()`, `.server_close()`)."""
    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, host, registry)
    return server


def exposed_names(metrics: UsageMetrics) -> set[str]:
    """Every sample name the collector can emit now (for tests that check dashboards)."""
    names: set[str] = set()
    for family in metrics.collect():
        names.update(s.name for s in family.samples)
    return names


def new_registry(metrics: UsageMetrics, extra: Iterable[Any] = ()) -> CollectorRegistry:
    """A fresh registry holding `metrics` (and any further collectors, e.g. a ProcessCollector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    for collector in extra:
        registry.register(collector)
    return registry
