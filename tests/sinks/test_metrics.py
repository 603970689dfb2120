"""The metrics collector: event counters, scrape-time translation, bounds, no client labels."""

from __future__ import annotations

import ipaddress
import re
import urllib.request
from types import SimpleNamespace

import pytest
from _store_helpers import make_event
from prometheus_client import generate_latest

from detector.model import Stats, UsageEvent
from detector.sinks.metrics import (
    AI_LABELS,
    RulesState,
    UsageMetrics,
    exposed_names,
    new_registry,
    parse_listen,
    serve,
)

# Overrides of the shared event factory: a tolerated ChatGPT flow from Burgerzaken.
CHATGPT = {
    "service": "chatgpt",
    "vendor": "OpenAI",
    "category": "chat_assistant",
    "jurisdiction": "US",
    "policy": "tolerated",
    "department": "burgerzaken",
}
FLOW = {
    **CHATGPT,
    "ts": "2025-03-03T09:00:00Z",
    "client": "p-7f3a9c",
    "bytes_up": 1200,
    "bytes_down": 56000,
    "duration": 3.0,
}


def ev(**changes: object) -> UsageEvent:
    return make_event(**{**FLOW, **changes})


def fake_store(**counters: float) -> SimpleNamespace:
    """Stands in for store.BatchWriter: counters as attributes, backlog() from `queued`."""
    store = SimpleNamespace(events_written=0, dropped=0, writes_total=0, last_write_seconds=0.0, queued=0)
    store.__dict__.update(counters)
    store.backlog = lambda: store.queued
    return store


FAKE_ALERTS = SimpleNamespace(
    alert_counts=lambda: {("large-upload", "high"): 2},
    delivery_counts=lambda: {("webhook", "ok"): 2, ("webhook", "retry"): 5},
    spool_sizes=lambda: {"webhook": 0, "syslog": 3},
)


def scrape(m: UsageMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return new_registry(m).get_sample_value(name, labels or {})


def full_metrics() -> tuple[UsageMetrics, Stats, SimpleNamespace, RulesState]:
    stats = Stats(
        packets=1000,
        flows_total=50,
        flows_evicted=2,
        flows_named=30,
        flows_dns_only=5,
        reassembly_overflows=1,
        dns_cache_evictions=4,
    )
    stats.anomaly("dns.label_loop")
    stats.anomaly("dns.label_loop")
    stats.flows_blind["ech"] = 7
    store = fake_store()
    rules = RulesState(version="2025.03", services=112, last_reload_success=True, last_reload_timestamp=1.7e9)
    m = UsageMetrics(
        stats,
        capture=lambda: {"eth1": (5000, 12, 1), "eth2": (10, 0, 0)},
        tables=lambda: (321, 4567),
        store=store,
        rules=rules,
        alerts=FAKE_ALERTS,
    )
    return m, stats, store, rules


def test_flow_event_counts_flow_and_bytes_by_catalogue_labels() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev())
    m.handle(ev(bytes_up=800, bytes_down=4000))
    assert scrape(m, "shadowai_ai_flows_total", CHATGPT) == 2
    assert scrape(m, "shadowai_ai_bytes_total", {**CHATGPT, "direction": "up"}) == 2000
    assert scrape(m, "shadowai_ai_bytes_total", {**CHATGPT, "direction": "down"}) == 60000
    assert scrape(m, "shadowai_ai_dns_lookups_total", CHATGPT) is None


def test_dns_event_counts_a_lookup_not_a_flow() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev(kind="dns", bytes_up=80, bytes_down=120))
    assert scrape(m, "shadowai_ai_dns_lookups_total", CHATGPT) == 1
    assert scrape(m, "shadowai_ai_flows_total", CHATGPT) is None
    assert scrape(m, "shadowai_ai_bytes_total", {**CHATGPT, "direction": "up"}) is None


def test_unattributed_events_touch_no_ai_counter() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev(service="", vendor="", category="", jurisdiction="", policy=""))
    assert scrape(m, "shadowai_ai_flows_total", {**CHATGPT, "service": ""}) is None
    assert not [s for f in m.collect() if f.name == "shadowai_ai_flows" for s in f.samples]


def test_encrypted_dns_counts_per_department_and_candidates_in_total() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev(kind="encrypted-dns", service="cloudflare-dns", category="encrypted_dns", department="ict"))
    m.handle(ev(kind="encrypted-dns", service="", department="ict"))
    m.handle(ev(kind="candidate", service="", server_name="chat.newllm.example"))
    assert scrape(m, "shadowai_encrypted_dns_flows_total", {"department": "ict"}) == 2
    assert scrape(m, "shadowai_candidate_names_total") == 1
    assert scrape(m, "shadowai_ai_flows_total", {**CHATGPT, "service": "cloudflare-dns"}) is None


def test_active_clients_counts_distinct_clients_in_the_event_time_window() -> None:
    m = UsageMetrics(Stats(), active_window=900)
    m.handle(ev(client="a", ts="2025-03-03T09:00:00Z", duration=0))
    m.handle(ev(client="a", ts="2025-03-03T09:01:00Z", duration=0))
    m.handle(ev(client="b", ts="2025-03-03T09:02:00Z", duration=0))
    m.handle(ev(client="c", kind="dns", ts="2025-03-03T09:03:00Z"))
    labels = {"service": "chatgpt", "department": "burgerzaken"}
    assert scrape(m, "shadowai_ai_active_clients", labels) == 3
    # 15 minutes after b's flow: a (last 09:01) and b (09:02) are out, c (09:03) is in.
    m.handle(ev(client="d", service="claude", ts="2025-03-03T09:17:30Z", duration=0))
    assert scrape(m, "shadowai_ai_active_clients", labels) == 1
    m.handle(ev(client="d", service="claude", ts="2025-03-03T10:00:00Z", duration=0))
    # A group that went quiet reads 0, not a stale value.
    assert scrape(m, "shadowai_ai_active_clients", labels) == 0
    assert scrape(m, "shadowai_ai_active_clients", {"service": "claude", "department": "burgerzaken"}) == 1


def test_active_clients_uses_the_end_of_long_flows() -> None:
    m = UsageMetrics(Stats(), active_window=900)
    # Started an hour before the newest event but lasted until 5 minutes before it.
    m.handle(ev(client="long", ts="2025-03-03T08:00:00Z", duration=3300))
    m.handle(ev(client="x", service="claude", ts="2025-03-03T09:00:00Z", duration=0))
    assert scrape(m, "shadowai_ai_active_clients", {"service": "chatgpt", "department": "burgerzaken"}) == 1


def test_active_clients_live_clock_ages_out_quiet_clients() -> None:
    now = [1_741_000_000.0]
    m = UsageMetrics(Stats(), active_window=900, clock=lambda: now[0])
    m.handle(ev(client="a", ts="2025-03-03T11:06:00Z", duration=0))  # 1741000000 - 240 s
    labels = {"service": "chatgpt", "department": "burgerzaken"}
    assert scrape(m, "shadowai_ai_active_clients", labels) == 1
    now[0] += 3600
    assert scrape(m, "shadowai_ai_active_clients", labels) == 0


def test_active_clients_memory_is_bounded() -> None:
    m = UsageMetrics(Stats(), max_active_entries=100)
    for i in range(1000):
        m.handle(ev(client=f"c{i}", ts="2025-03-03T09:00:00Z"))
    assert scrape(m, "shadowai_ai_active_clients", {"service": "chatgpt", "department": "burgerzaken"}) == 100
    assert m.active_evictions == 900


def test_unparseable_event_time_is_counted_but_not_tracked_as_active() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev(ts="not a time"))
    assert scrape(m, "shadowai_ai_flows_total", CHATGPT) == 1
    assert scrape(m, "shadowai_ai_active_clients", {"service": "chatgpt", "department": "burgerzaken"}) is None


def test_pipeline_stats_are_translated_at_scrape_time() -> None:
    m, stats, _, _ = full_metrics()
    assert scrape(m, "shadowai_decoded_packets_total") == 1000
    stats.packets += 5  # the capture thread keeps counting; the next scrape sees it
    assert scrape(m, "shadowai_decoded_packets_total") == 1005
    assert scrape(m, "shadowai_decode_anomalies_total", {"kind": "dns.label_loop"}) == 2
    assert scrape(m, "shadowai_flows_total") == 50
    assert scrape(m, "shadowai_flow_table_evictions_total") == 2
    assert scrape(m, "shadowai_dns_cache_evictions_total") == 4
    assert scrape(m, "shadowai_handshake_buffer_overflows_total") == 1
    assert scrape(m, "shadowai_visibility_flows_total", {"visibility": "named", "reason": ""}) == 30
    assert scrape(m, "shadowai_visibility_flows_total", {"visibility": "dns_only", "reason": ""}) == 5
    assert scrape(m, "shadowai_visibility_flows_total", {"visibility": "blind", "reason": "ech"}) == 7


def test_capture_tables_rules_and_alert_sources() -> None:
    m, _, _, rules = full_metrics()
    assert scrape(m, "shadowai_capture_packets_total", {"interface": "eth1"}) == 5000
    assert scrape(m, "shadowai_capture_kernel_drops_total", {"interface": "eth1"}) == 12
    assert scrape(m, "shadowai_capture_interface_drops_total", {"interface": "eth1"}) == 1
    assert scrape(m, "shadowai_flow_table_flows") == 321
    assert scrape(m, "shadowai_dns_cache_entries") == 4567
    assert scrape(m, "shadowai_rules_info", {"version": "2025.03"}) == 1
    assert scrape(m, "shadowai_rules_services") == 112
    assert scrape(m, "shadowai_rules_last_reload_success") == 1
    assert scrape(m, "shadowai_rules_last_reload_timestamp_seconds") == 1.7e9
    rules.last_reload_success = False  # a broken SIGHUP reload, updated in place
    assert scrape(m, "shadowai_rules_last_reload_success") == 0
    assert scrape(m, "shadowai_alerts_total", {"rule": "large-upload", "severity": "high"}) == 2
    assert scrape(m, "shadowai_alert_deliveries_total", {"sink": "webhook", "result": "retry"}) == 5
    assert scrape(m, "shadowai_alert_spool_events", {"sink": "syslog"}) == 3


def test_build_info_carries_version_and_python() -> None:
    m = UsageMetrics(Stats(), version="9.9.9")
    families = {f.name: f for f in m.collect()}
    (sample,) = families["shadowai_build_info"].samples
    assert sample.labels["version"] == "9.9.9" and sample.labels["python"].count(".") == 2
    assert sample.value == 1


def test_store_counters_and_sampled_write_latency() -> None:
    m, _, store, _ = full_metrics()
    store.queued, store.events_written, store.dropped = 17, 900, 3
    store.writes_total, store.last_write_seconds = 3, 0.02
    assert scrape(m, "shadowai_store_backlog_events") == 17
    assert scrape(m, "shadowai_store_events_written_total") == 900
    assert scrape(m, "shadowai_store_events_dropped_total") == 3
    # Without a per-batch hook, each scrape records the writes since the last one.
    assert scrape(m, "shadowai_store_write_duration_seconds_count") == 3
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "0.025"}) == 3
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "0.01"}) == 0


def test_store_write_hook_records_each_batch_exactly() -> None:
    m, _, store, _ = full_metrics()
    for seconds in (0.004, 0.3, 7.0, 30.0):
        m.observe_store_write(seconds)
    store.writes_total = 4
    assert scrape(m, "shadowai_store_write_duration_seconds_count") == 4
    assert scrape(m, "shadowai_store_write_duration_seconds_sum") == pytest.approx(37.304)
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "0.005"}) == 1
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "0.5"}) == 2
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "10.0"}) == 3
    assert scrape(m, "shadowai_store_write_duration_seconds_bucket", {"le": "+Inf"}) == 4


def test_a_failing_source_is_skipped_and_counted_not_fatal() -> None:
    def broken() -> dict[str, tuple[int, int, int]]:
        raise OSError("interface vanished")

    m = UsageMetrics(Stats(packets=3), capture=broken)
    text = generate_latest(new_registry(m)).decode()
    assert "shadowai_decoded_packets_total 3.0" in text
    assert "shadowai_capture_packets_total" not in text
    assert 'shadowai_scrape_errors_total{source="capture"} 1.0' in text


def test_no_label_carries_a_client_or_an_address() -> None:
    m, _, _, _ = full_metrics()
    for i in range(50):
        m.handle(ev(client=f"pseudo-{i}", server_ip=f"10.0.0.{i}", server_name=f"h{i}.chatgpt.com"))
    m.handle(ev(kind="candidate", service="", server_name="chat.newllm.example"))
    allowed = set(AI_LABELS) | {
        "direction",
        "interface",
        "kind",
        "visibility",
        "reason",
        "version",
        "python",
        "rule",
        "severity",
        "sink",
        "result",
        "source",
        "le",
    }
    for family in m.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)
            for value in sample.labels.values():
                assert not value.startswith("pseudo-") and not value.endswith(".example")
                assert "chatgpt.com" not in value
                with pytest.raises(ValueError):
                    ipaddress.ip_address(value)


def test_series_count_does_not_grow_with_clients() -> None:
    m = UsageMetrics(Stats())
    m.handle(ev(client="first"))
    before = sum(len(f.samples) for f in m.collect())
    for i in range(500):
        m.handle(ev(client=f"c{i}", server_ip=f"10.1.{i // 250}.{i % 250}"))
    assert sum(len(f.samples) for f in m.collect()) == before


def test_exposition_follows_prometheus_naming() -> None:
    m, _, _, _ = full_metrics()
    m.handle(ev())
    text = generate_latest(new_registry(m)).decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name.startswith("shadowai_")
            assert name.endswith("_total") == (kind == "counter"), line
            assert re.fullmatch(r"[a-z_]+", name)


def test_exposed_names_cover_the_issue_list() -> None:
    m, _, _, _ = full_metrics()
    m.handle(ev())
    m.handle(ev(kind="dns"))
    m.handle(ev(kind="encrypted-dns", department="ict"))
    names = exposed_names(m)
    expected = {
        "shadowai_build_info",
        "shadowai_capture_packets_total",
        "shadowai_capture_kernel_drops_total",
        "shadowai_capture_interface_drops_total",
        "shadowai_decoded_packets_total",
        "shadowai_decode_anomalies_total",
        "shadowai_flows_total",
        "shadowai_flow_table_flows",
        "shadowai_flow_table_evictions_total",
        "shadowai_dns_cache_entries",
        "shadowai_dns_cache_evictions_total",
        "shadowai_handshake_buffer_overflows_total",
        "shadowai_visibility_flows_total",
        "shadowai_ai_flows_total",
        "shadowai_ai_dns_lookups_total",
        "shadowai_ai_bytes_total",
        "shadowai_ai_active_clients",
        "shadowai_encrypted_dns_flows_total",
        "shadowai_candidate_names_total",
        "shadowai_store_write_duration_seconds_bucket",
        "shadowai_store_backlog_events",
        "shadowai_store_events_written_total",
        "shadowai_store_events_dropped_total",
        "shadowai_rules_info",
        "shadowai_rules_services",
        "shadowai_rules_last_reload_success",
        "shadowai_rules_last_reload_timestamp_seconds",
        "shadowai_alerts_total",
        "shadowai_alert_deliveries_total",
        "shadowai_alert_spool_events",
    }
    assert expected <= names


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9810", ("127.0.0.1", 9810)), ("[::1]:0", ("::1", 0)), (":9810", ("127.0.0.1", 9810))],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9810", "host:", "host:99999", "host:http"])
def test_parse_listen_rejects_bad_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)


def test_serve_exposes_the_injected_registry_over_http() -> None:
    m, _, _, _ = full_metrics()
    m.handle(ev())
    server = serve("127.0.0.1:0", new_registry(m))
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'shadowai_ai_flows_total{category="chat_assistant"' in body
        assert "python_gc_objects_collected_total" not in body  # not the global REGISTRY
    finally:
        server.shutdown()
        server.server_close()
