"""Helpers for the dashboard and rules tests: load grafana/build.py, list every query, fill in
Grafana's variables, name the metrics a query uses, and a fully fed metrics collector."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from detector.model import Stats, UsageEvent
from detector.sinks.metrics import RulesState, UsageMetrics, exposed_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "prometheus" / "rules.yml"
RULES_TESTS = (GRAFANA / "prometheus" / "rules_test.yml", GRAFANA / "prometheus" / "rules_test_daily.yml")
EXAMPLE_CONFIG = GRAFANA / "prometheus" / "prometheus.example.yml"

# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

# What Grafana puts in for its variables when "All" is selected over a one-hour range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range_s": "3600",
    "$__range": "1h",
    "$datasource": "shadowai-prometheus",
}
SELECTED_ALL = ".*"


def load_build() -> ModuleType:
    """grafana/build.py as a module."""
    spec = importlib.util.spec_from_file_location("shadowai_grafana_build", GRAFANA / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    """The dashboards as the generator builds them."""
    build = load_build()
    return {name: fn() for name, fn in build.DASHBOARDS.items()}


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) for every query of every panel."""
    build = load_build()
    for name, dash in dashboards().items():
        for title, expr in build.expressions(dash):
            yield name, title, expr


def variable_queries() -> Iterator[tuple[str, str, str, str]]:
    """(dashboard file, variable, series selector, label) for every label_values() variable."""
    for name, dash in dashboards().items():
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            yield name, var["name"], m.group(1), m.group(2)


def substitute(expr: str) -> str:
    """Fill Grafana's variables as the dashboards do with every variable at All."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?(job|sensor|department|service)\}?", SELECTED_ALL, expr)


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names a PromQL expression reads (string literals ignored)."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    code = re.sub(r"\{[^}]*\}", "{}", code)  # label matchers
    code = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", code)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", code))
    return {n for n in names if n.startswith("shadowai_") or ":" in n or n in PROMETHEUS_SERIES}


def rules() -> dict[str, Any]:
    """rules.yml as data."""
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def recording_rules() -> dict[str, str]:
    """record name -> expression."""
    return {r["record"]: r["expr"] for g in rules()["groups"] for r in g["rules"] if "record" in r}


def alerting_rules() -> dict[str, str]:
    """alert name -> expression."""
    return {r["alert"]: r["expr"] for g in rules()["groups"] for r in g["rules"] if "alert" in r}


# ---------------------------------------------------------------------------
# A collector with every source fed, as the daemon will have it
# ---------------------------------------------------------------------------

SERVICES = (
    # service, vendor, category, jurisdiction, policy
    ("copilot", "Microsoft", "productivity_embedded_ai", "US", "sanctioned"),
    ("chatgpt", "OpenAI", "chat_assistant", "US", "tolerated"),
    ("mistral", "Mistral AI", "chat_assistant", "EU", "unsanctioned"),
    ("deepseek", "DeepSeek", "chat_assistant", "CN", "blocked"),
    ("elevenlabs", "ElevenLabs", "image_video_audio_gen", "UK", "unsanctioned"),
)
DEPARTMENTS = ("burgerzaken", "sociaal-domein", "ict")

BASE_FIELDS: dict[str, Any] = {
    "ts": "2025-03-03T09:00:00Z", "kind": "flow", "client": "p-0", "department": "ict", "service": "chatgpt",
    "vendor": "OpenAI", "category": "chat_assistant", "jurisdiction": "US", "policy": "tolerated",
    "server_name": "chatgpt.com", "server_ip": "104.18.32.47", "server_port": 443, "transport": "tcp",
    "evidence": "tls-sni", "bytes_up": 30_000, "bytes_down": 250_000, "packets": 120, "duration": 20.0,
}  # fmt: skip
BASE_EVENT = UsageEvent(**BASE_FIELDS)


class GrowingStore:
    """Stands in for the store's BatchWriter."""

    def __init__(self) -> None:
        self.events_written = 0
        self.dropped = 0
        self.writes_total = 0
        self.last_write_seconds = 0.0
        self.queued = 0

    def backlog(self) -> int:
        return self.queued


class GrowingAlerts:
    """Stands in for soc.AlertService."""

    def __init__(self) -> None:
        self.raised: dict[tuple[str, str], int] = {}
        self.delivered: dict[tuple[str, str], int] = {}
        self.spooled: dict[str, int] = {"webhook": 0, "syslog": 0}

    def alert_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.raised)

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.delivered)

    def spool_sizes(self) -> dict[str, int]:
        return dict(self.spooled)


class Feed:
    """A UsageMetrics with every source attached, and `step()` to make a little traffic."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.capture = {"eth1": [0, 0, 0], "eth2": [0, 0, 0]}
        self.store = GrowingStore()
        self.alerts = GrowingAlerts()
        self.rules = RulesState(
            version="2025.03-test", services=112, last_reload_success=True, last_reload_timestamp=1_741_000_000.0
        )
        self.metrics = UsageMetrics(
            self.stats,
            capture=lambda: {k: (v[0], v[1], v[2]) for k, v in self.capture.items()},
            tables=lambda: (1000 + self.n % 50, 20_000 + self.n),
            store=self.store,
            rules=self.rules,
            alerts=self.alerts,
        )
        self.n = 0
        self.clock = 1_741_000_000.0  # event time, advancing 10 s per step

    def step(self) -> None:
        """One slice of traffic through every counter."""
        self.n += 1
        n = self.n
        self.clock += 10
        ts = f"2025-03-03T{9 + (n * 10 // 3600) % 12:02d}:{(n * 10 // 60) % 60:02d}:{n * 10 % 60:02d}Z"
        for i, (service, vendor, category, jurisdiction, policy) in enumerate(SERVICES):
            dept = DEPARTMENTS[(n + i) % len(DEPARTMENTS)]
            base = replace(
                BASE_EVENT,
                ts=ts,
                service=service,
                vendor=vendor,
                category=category,
                jurisdiction=jurisdiction,
                policy=policy,
                department=dept,
                client=f"p-{(n + i) % 7}",
            )
            self.metrics.handle(base)
            self.metrics.handle(replace(base, kind="dns", bytes_up=80, bytes_down=200))
        self.metrics.handle(
            replace(BASE_EVENT, ts=ts, kind="encrypted-dns", service="cloudflare-dns", department=DEPARTMENTS[n % 3])
        )
        self.metrics.handle(replace(BASE_EVENT, ts=ts, kind="candidate", service="", server_name=f"c{n}.ai.example"))
        s = self.stats
        s.packets += 5000
        s.flows_total += 40
        s.flows_named += 25
        s.flows_dns_only += 8
        s.flows_blind["ech"] = s.flows_blind.get("ech", 0) + 4
        s.flows_blind["no-sni"] = s.flows_blind.get("no-sni", 0) + 3
        s.flows_evicted += 1
        s.dns_cache_evictions += 2
        s.reassembly_overflows += n % 2
        s.anomaly("dns.label_loop")
        s.anomaly("tls.ext_len_overflow")
        self.capture["eth1"][0] += 4000
        self.capture["eth1"][1] += 20
        self.capture["eth1"][2] += 1
        self.capture["eth2"][0] += 1000
        self.store.queued = 100 + n % 30
        self.store.events_written += 12
        self.metrics.observe_store_write(0.004 + (n % 10) / 100)
        self.store.writes_total += 1
        a = self.alerts
        for key in (("large-upload", "high"), ("unsanctioned-first-use", "medium")):
            a.raised[key] = a.raised.get(key, 0) + 1
        for key in (("webhook", "ok"), ("syslog", "retry")):
            a.delivered[key] = a.delivered.get(key, 0) + 1
        a.spooled["syslog"] = n % 5


def fed_names() -> set[str]:
    """Every sample name the fed collector exposes."""
    feed = Feed()
    feed.step()
    feed.step()
    return exposed_names(feed.metrics)
