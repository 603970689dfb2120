#!/usr/bin/env python3
"""The one source of the Grafana dashboards: writes grafana/dashboards/*.json.

    python3 grafana/build.py          # rewrite the JSON files
    python3 grafana/build.py --check  # exit 1 if the committed files differ from this code

Stdlib only, so it runs anywhere Grafana is administered. The dashboards reference their data
source through the `datasource` variable (default: the provisioned uid `shadowai-prometheus`),
so they import unchanged into any Grafana 10+ with any Prometheus data source. Queries use
only what the daemon exposes (detector/sinks/metrics.py), the recording rules in
grafana/prometheus/rules.yml, and Prometheus's own scrape series (`up`, `scrape_*`);
tests/grafana checks both, and evaluates every query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

SCHEMA_VERSION = 38  # Grafana 10.0; later versions migrate it on load
PROVISIONED_DS_UID = "shadowai-prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["shadowai"]

# Selectors shared by every query: the sensor (Prometheus job and instance), and for usage
# series the department and the service.
SENSOR = 'job=~"$job", instance=~"$sensor"'
USAGE = SENSOR + ', department=~"$department", service=~"$service"'
UNSANCTIONED = 'policy=~"unsanctioned|blocked"'

# Recording rules (grafana/prometheus/rules.yml) the dashboards read.
R_FLOWS = "service_department:shadowai_ai_flows:rate5m"
R_LOOKUPS = "service_department:shadowai_ai_dns_lookups:rate5m"
R_BYTES = "service_department:shadowai_ai_bytes:rate5m"
R_REGION_BYTES = "region:shadowai_ai_bytes:rate5m"
R_DROP_RATIO = "instance:shadowai_capture_kernel_drop_ratio:rate5m"
R_BLIND_RATIO = "instance:shadowai_visibility_blind_ratio:rate1h"


def region(expr: str) -> str:
    """Add a `region` label (EU, US, CN, other) from `jurisdiction`, as rules.yml does."""
    return (
        f'label_replace(label_replace({expr}, "region", "other", "", ""), "region", "$1", "jurisdiction", "(EU|US|CN)")'
    )


def share(part: str, whole: str) -> str:
    """part / whole, reading 0 (not "no data") when nothing matches `part`."""
    return f"({part} or vector(0)) / {whole}"


# ---------------------------------------------------------------------------
# Panel builders
# ---------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    """One Prometheus query of a panel (refId filled in by the layout)."""
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def _panel(
    kind: str, title: str, targets: list[dict[str, Any]], description: str, unit: str, w: int, h: int
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "gridPos": {"w": w, "h": h},
    }


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    description: str = "",
    stack: str = "none",
    w: int = 12,
    h: int = 8,
) -> dict[str, Any]:
    """A time series graph; stack = none | normal | percent."""
    p = _panel("timeseries", title, targets, description, unit, w, h)
    p["fieldConfig"]["defaults"].update(
        {
            "min": 0,
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 20 if stack != "none" else 5,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": stack, "group": "A"},
            },
        }
    )
    p["options"] = {
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return p


def stat(
    title: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    description: str = "",
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "auto",
    w: int = 4,
    h: int = 4,
) -> dict[str, Any]:
    """A single big number (the last value)."""
    p = _panel("stat", title, targets, description, unit, w, h)
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "blue")])]
    p["fieldConfig"]["defaults"].update(
        {
            "thresholds": {"mode": "absolute", "steps": steps},
            "mappings": mappings or [],
            "color": {"mode": "thresholds"},
        }
    )
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": text_mode,
    }
    return p


def stacked(title: str, series: str, label: str, scale: str = "", **kw: Any) -> dict[str, Any]:
    """A stacked graph of `series` summed by one label (`scale` e.g. " * 60" for per minute)."""
    return timeseries(title, [target(f"sum by ({label}) ({series}){scale}", f"{{{{{label}}}}}")], stack="normal", **kw)


def piechart(
    title: str, targets: list[dict[str, Any]], *, unit: str = "short", description: str = "", w: int = 8, h: int = 8
) -> dict[str, Any]:
    """A donut of the last values."""
    p = _panel("piechart", title, targets, description, unit, w, h)
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "pieType": "donut",
        "displayLabels": ["percent"],
        "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "values": ["value", "percent"]},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return p


def bargauge(
    title: str, targets: list[dict[str, Any]], *, unit: str = "short", description: str = "", w: int = 8, h: int = 8
) -> dict[str, Any]:
    """Horizontal bars, one per series (top-N lists)."""
    p = _panel("bargauge", title, targets, description, unit, w, h)
    p["fieldConfig"]["defaults"]["min"] = 0
    p["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
    }
    return p


def table(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str = "",
    w: int = 12,
    h: int = 8,
    rename: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An instant-query table; the Time column is hidden."""
    p = _panel("table", title, targets, description, "short", w, h)
    p["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    p["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename or {}}},
    ]
    return p


def row(title: str) -> dict[str, Any]:
    """A (non-collapsed) row header."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def layout(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right on Grafana's 24-column grid, number them and their queries."""
    x = y = row_h = 0
    out = []
    for pid, panel in enumerate(items, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > 24:
            y += row_h
            x = row_h = 0
        panel = {"id": pid, **panel, "gridPos": {"h": pos["h"], "w": pos["w"], "x": x, "y": y}}
        for i, t in enumerate(panel.get("targets", [])):
            t["refId"] = chr(ord("A") + i)
        out.append(panel)
        if panel["type"] == "row":
            y += 1
        else:
            x += pos["w"]
            row_h = max(row_h, pos["h"])
    return out


# ---------------------------------------------------------------------------
# Template variables
# ---------------------------------------------------------------------------


def _datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus (ShadowAI)", "value": PROVISIONED_DS_UID},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value variable from label_values(...), with All = any value."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,  # on time range change: new sensors and services appear
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def sensor_vars() -> list[dict[str, Any]]:
    """datasource, job and sensor (the Prometheus instance)."""
    return [
        _datasource_var(),
        query_var("job", "Job", "label_values(shadowai_build_info, job)"),
        query_var("sensor", "Sensor", 'label_values(shadowai_build_info{job=~"$job"}, instance)'),
    ]


def usage_vars() -> list[dict[str, Any]]:
    """Sensor variables plus department and service."""
    return [
        *sensor_vars(),
        query_var("department", "Department", f"label_values(shadowai_ai_flows_total{{{SENSOR}}}, department)"),
        query_var(
            "service",
            "Service",
            f'label_values(shadowai_ai_flows_total{{{SENSOR}, department=~"$department"}}, service)',
        ),
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict[str, Any]],
    variables: list[dict[str, Any]],
    time_from: str,
) -> dict[str, Any]:
    """The dashboard envelope."""
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *(
                {"type": "panel", "id": t, "name": t, "version": ""}
                for t in sorted({p["type"] for p in panels if p["type"] != "row"})
            ),
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": TAGS,
                "targetBlank": False,
                "title": "ShadowAI",
                "type": "dashboards",
            }
        ],
        "liveNow": False,
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------------------
# AI usage (for the CISO)
# ---------------------------------------------------------------------------


def ai_usage() -> dict[str, Any]:
    """Which AI services are used, by whom (departments), how much, and where the data goes."""
    flows_range = f"increase(shadowai_ai_flows_total{{{USAGE}}}[$__range])"
    per_min = " * 60"
    up_by_jurisdiction = (
        f'sum by (jurisdiction) (increase(shadowai_ai_bytes_total{{{USAGE}, direction="up"}}[$__range]))'
    )
    policy_colors = [(None, "green")]
    panels = [
        row("At a glance (selected time range)"),
        stat(
            "AI flows",
            [target(f"sum({flows_range})")],
            description="Connections to AI services in the selected time range.",
        ),
        stat(
            "Active clients now",
            [target(f"sum(shadowai_ai_active_clients{{{USAGE}}})")],
            description="Distinct clients that used an AI service in the last 15 minutes of traffic, "
            "counted once per service they use. No client is ever named in metrics.",
        ),
        stat(
            "Sanctioned share",
            [
                target(
                    share(
                        f'sum(increase(shadowai_ai_flows_total{{{USAGE}, policy="sanctioned"}}[$__range]))',
                        f"sum({flows_range})",
                    )
                )
            ],
            unit="percentunit",
            thresholds=policy_colors,
            description="Share of AI flows that went to services the municipality approved.",
        ),
        stat(
            "Unsanctioned or blocked share",
            [
                target(
                    share(
                        f"sum(increase(shadowai_ai_flows_total{{{USAGE}, {UNSANCTIONED}}}[$__range]))",
                        f"sum({flows_range})",
                    )
                )
            ],
            unit="percentunit",
            thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")],
            description="Share of AI flows to services the policy does not allow.",
        ),
        stat(
            "Data sent to AI services",
            [target(f'sum(increase(shadowai_ai_bytes_total{{{USAGE}, direction="up"}}[$__range]))')],
            unit="bytes",
            description="Bytes uploaded (client to service) in the selected time range.",
        ),
        stat(
            "Flows the sensor cannot name",
            [
                target(
                    share(
                        f'sum(increase(shadowai_visibility_flows_total{{{SENSOR}, visibility="blind"}}[$__range]))',
                        f"sum(increase(shadowai_visibility_flows_total{{{SENSOR}}}[$__range]))",
                    )
                )
            ],
            unit="percentunit",
            thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")],
            description="TLS/QUIC/HTTP flows with no name from SNI, Host or the DNS cache (ECH, "
            "encrypted DNS, flows that started before the sensor). AI use among them is not counted.",
        ),
        row("Usage over time"),
        stacked("AI flows per minute by service", f"{R_FLOWS}{{{USAGE}}}", "service", per_min),
        stacked(
            "Active clients by service",
            f"shadowai_ai_active_clients{{{USAGE}}}",
            "service",
            description="Distinct clients per service in the last 15 minutes of traffic.",
        ),
        stacked("AI flows per minute by category", f"{R_FLOWS}{{{USAGE}}}", "category", per_min),
        stacked("AI flows per minute by policy", f"{R_FLOWS}{{{USAGE}}}", "policy", per_min),
        stacked("AI flows per minute by department", f"{R_FLOWS}{{{USAGE}}}", "department", per_min),
        stacked("Active clients by department", f"shadowai_ai_active_clients{{{USAGE}}}", "department"),
        stacked(
            "DNS lookups of AI services per minute",
            f"{R_LOOKUPS}{{{USAGE}}}",
            "service",
            per_min,
            description="Lookups also show use by clients whose connections the sensor cannot see.",
        ),
        timeseries(
            "Sanctioned vs unsanctioned share",
            [
                target(
                    f"sum by (policy) ({R_FLOWS}{{{USAGE}}}) / ignoring (policy) group_left sum({R_FLOWS}{{{USAGE}}})",
                    "{{policy}}",
                )
            ],
            unit="percentunit",
            stack="normal",
        ),
        row("Policy and where data goes"),
        piechart(
            "Flows by policy",
            [target(f"sum by (policy) ({flows_range})", "{{policy}}", instant=True)],
            description="Selected time range.",
        ),
        piechart(
            "Data sent by vendor jurisdiction",
            [target(f"sum by (region) ({region(up_by_jurisdiction)})", "{{region}}", instant=True)],
            unit="bytes",
            description="Bytes uploaded, by where the vendor sits (EU, US, CN, other).",
        ),
        bargauge(
            "Top unsanctioned services",
            [
                target(
                    f"topk(10, sum by (service) (increase(shadowai_ai_flows_total{{{USAGE}, {UNSANCTIONED}}}[$__range])))",
                    "{{service}}",
                    instant=True,
                )
            ],
            description="Flows to unsanctioned or blocked services in the selected time range.",
        ),
        timeseries(
            "Data sent to AI services by vendor jurisdiction",
            [target(f'sum by (region) ({R_REGION_BYTES}{{{USAGE}, direction="up"}})', "{{region}}")],
            unit="Bps",
            stack="normal",
            w=16,
        ),
        bargauge(
            "Top services by data sent",
            [
                target(
                    f'topk(10, sum by (service) (increase(shadowai_ai_bytes_total{{{USAGE}, direction="up"}}[$__range])))',
                    "{{service}}",
                    instant=True,
                )
            ],
            unit="bytes",
        ),
        stat(
            "New services this week",
            [target(f"count({_new_this_week()}) or vector(0)")],
            description="Services used in the last 7 days that were not used in the 7 days before.",
        ),
        table(
            "New services this week (list)",
            [target(_new_this_week(), instant=True, table=True)],
            w=10,
            rename={"Value": "seen"},
            description="Services used in the last 7 days that were not used in the 7 days before.",
        ),
        table(
            "Services in use",
            [
                target(
                    f"sum by (service, vendor, category, jurisdiction, policy) ({flows_range})",
                    instant=True,
                    table=True,
                )
            ],
            w=10,
            rename={"Value": "flows"},
            description="Selected time range.",
        ),
        row("Visibility"),
        timeseries(
            "How flows were named",
            [
                target(
                    f"sum by (visibility) (rate(shadowai_visibility_flows_total{{{SENSOR}}}[$__rate_interval]))",
                    "{{visibility}}",
                )
            ],
            stack="percent",
            unit="short",
            w=8,
            description="named: own SNI/Host; dns_only: through the DNS cache; blind: no name.",
        ),
        timeseries(
            "Blind flows per minute by reason",
            [
                target(
                    f'sum by (reason) (rate(shadowai_visibility_flows_total{{{SENSOR}, visibility="blind"}}[$__rate_interval])){per_min}',
                    "{{reason}}",
                )
            ],
            stack="normal",
            w=8,
        ),
        timeseries(
            "Blind share (1 h)", [target(f"{R_BLIND_RATIO}{{{SENSOR}}}", "{{instance}}")], unit="percentunit", w=8
        ),
        bargauge(
            "Encrypted-DNS flows by department",
            [
                target(
                    f'sum by (department) (increase(shadowai_encrypted_dns_flows_total{{{SENSOR}, department=~"$department"}}[$__range]))',
                    "{{department}}",
                    instant=True,
                )
            ],
            w=12,
            description="Flows to public DoH/DoT resolvers: their DNS lookups are invisible to the sensor.",
        ),
        stat(
            "New AI-looking names",
            [target(f"sum(increase(shadowai_candidate_names_total{{{SENSOR}}}[$__range]))")],
            w=12,
            h=8,
            description="Names that look like AI services but are not in the catalogue; "
            "see `shadowai report --group-by new`.",
        ),
    ]
    return dashboard(
        "shadowai-ai-usage",
        "ShadowAI / AI usage",
        "Which generative-AI services the organisation uses, by department and policy, and where the data goes.",
        layout(panels),
        usage_vars(),
        "now-7d",
    )


def _new_this_week() -> str:
    this_week = (
        f"group by (service, vendor, jurisdiction, policy) (max_over_time(shadowai_ai_flows_total{{{USAGE}}}[1w]))"
    )
    before = f"group by (service) (max_over_time(shadowai_ai_flows_total{{{USAGE}}}[1w] offset 1w))"
    return f"{this_week} unless on (service) {before}"


# ---------------------------------------------------------------------------
# Sensor health (for the admin)
# ---------------------------------------------------------------------------


def sensor_health() -> dict[str, Any]:
    """Is the sensor up, does it keep up with the link, is its state bounded, is the database keeping up."""
    rate = "[$__rate_interval]"
    up_mapping = [
        {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}
    ]
    ok_mapping = [
        {"type": "value", "options": {"0": {"text": "FAILED", "color": "red"}, "1": {"text": "OK", "color": "green"}}}
    ]
    panels = [
        row("Sensor"),
        stat(
            "Scrape",
            [target(f"up{{{SENSOR}}}", "{{instance}}")],
            mappings=up_mapping,
            thresholds=[(None, "red"), (1, "green")],
            description="Prometheus reaches the sensor's /metrics.",
        ),
        stat(
            "Version",
            [target(f"count by (version) (shadowai_build_info{{{SENSOR}}})", "{{version}}")],
            text_mode="name",
        ),
        stat("Rules version", [target(f"shadowai_rules_info{{{SENSOR}}}", "{{version}}")], text_mode="name"),
        stat(
            "Last rule reload",
            [target(f"shadowai_rules_last_reload_success{{{SENSOR}}}", "{{instance}}")],
            mappings=ok_mapping,
            thresholds=[(None, "red"), (1, "green")],
            description="A failed reload (SIGHUP with a broken file) keeps the previous rules running.",
        ),
        stat(
            "Since last rule load",
            [target(f"time() - shadowai_rules_last_reload_timestamp_seconds{{{SENSOR}}}", "{{instance}}")],
            unit="s",
        ),
        stat("Catalogue services", [target(f"shadowai_rules_services{{{SENSOR}}}", "{{instance}}")]),
        row("Capture"),
        timeseries(
            "Packets per second",
            [
                target(
                    f"sum by (instance, interface) (rate(shadowai_capture_packets_total{{{SENSOR}}}{rate}))",
                    "{{instance}} {{interface}} captured",
                ),
                target(
                    f"sum by (instance) (rate(shadowai_decoded_packets_total{{{SENSOR}}}{rate}))",
                    "{{instance}} decoded",
                ),
            ],
            unit="pps",
            w=8,
        ),
        timeseries(
            "Drops per second",
            [
                target(
                    f"sum by (instance, interface) (rate(shadowai_capture_kernel_drops_total{{{SENSOR}}}{rate}))",
                    "{{instance}} {{interface}} kernel",
                ),
                target(
                    f"sum by (instance, interface) (rate(shadowai_capture_interface_drops_total{{{SENSOR}}}{rate}))",
                    "{{instance}} {{interface}} interface",
                ),
            ],
            unit="pps",
            w=8,
            description="Kernel drops: the capture buffer overflowed. Interface drops: the NIC.",
        ),
        timeseries(
            "Kernel drop share",
            [target(f"{R_DROP_RATIO}{{{SENSOR}}}", "{{instance}}")],
            unit="percentunit",
            w=8,
            description="Dropped / (captured + dropped) over 5 minutes. Alert: ShadowAIKernelDrops.",
        ),
        timeseries(
            "Decode anomalies per second by name",
            [target(f"sum by (kind) (rate(shadowai_decode_anomalies_total{{{SENSOR}}}{rate}))", "{{kind}}")],
            stack="normal",
            w=24,
            description="Malformed packets by stable anomaly name (decode/anomalies.py).",
        ),
        row("Flow state"),
        timeseries(
            "Flow table and DNS cache",
            [
                target(f"shadowai_flow_table_flows{{{SENSOR}}}", "{{instance}} flows"),
                target(f"shadowai_dns_cache_entries{{{SENSOR}}}", "{{instance}} DNS answers"),
            ],
            w=8,
        ),
        timeseries(
            "Evictions and overflows per second",
            [
                target(f"rate(shadowai_flow_table_evictions_total{{{SENSOR}}}{rate})", "{{instance}} flow evictions"),
                target(f"rate(shadowai_dns_cache_evictions_total{{{SENSOR}}}{rate})", "{{instance}} DNS evictions"),
                target(
                    f"rate(shadowai_handshake_buffer_overflows_total{{{SENSOR}}}{rate})",
                    "{{instance}} handshake overflows",
                ),
            ],
            w=8,
            description="Rising evictions mean the tables are at their bounds: raise flows.max_flows.",
        ),
        timeseries(
            "Flows per second by visibility",
            [
                target(
                    f"sum by (visibility) (rate(shadowai_visibility_flows_total{{{SENSOR}}}{rate}))", "{{visibility}}"
                ),
                target(f"sum(rate(shadowai_flows_total{{{SENSOR}}}{rate}))", "all flows"),
            ],
            w=8,
        ),
        row("Database"),
        timeseries(
            "Write backlog",
            [target(f"shadowai_store_backlog_events{{{SENSOR}}}", "{{instance}}")],
            w=8,
            description="Events in memory waiting for the writer.",
        ),
        timeseries(
            "Batch write latency",
            [
                target(
                    f"histogram_quantile(0.5, sum by (instance, le) (rate(shadowai_store_write_duration_seconds_bucket{{{SENSOR}}}{rate})))",
                    "{{instance}} p50",
                ),
                target(
                    f"histogram_quantile(0.99, sum by (instance, le) (rate(shadowai_store_write_duration_seconds_bucket{{{SENSOR}}}{rate})))",
                    "{{instance}} p99",
                ),
            ],
            unit="s",
            w=8,
        ),
        timeseries(
            "Events written and dropped per second",
            [
                target(f"rate(shadowai_store_events_written_total{{{SENSOR}}}{rate})", "{{instance}} written"),
                target(f"rate(shadowai_store_events_dropped_total{{{SENSOR}}}{rate})", "{{instance}} dropped"),
            ],
            w=8,
        ),
        row("SOC alerts"),
        timeseries(
            "Alerts per hour by rule",
            [
                target(
                    f"sum by (rule, severity) (rate(shadowai_alerts_total{{{SENSOR}}}{rate})) * 3600",
                    "{{rule}} ({{severity}})",
                )
            ],
            stack="normal",
            w=8,
        ),
        timeseries(
            "Alert deliveries per minute",
            [
                target(
                    f"sum by (sink, result) (rate(shadowai_alert_deliveries_total{{{SENSOR}}}{rate})) * 60",
                    "{{sink}} {{result}}",
                )
            ],
            w=8,
            description="retry: the destination was down and the alert stays spooled.",
        ),
        timeseries(
            "Alerts waiting in the spool",
            [target(f"sum by (sink) (shadowai_alert_spool_events{{{SENSOR}}})", "{{sink}}")],
            w=8,
        ),
        row("Scrape"),
        timeseries("Scrape health", [target(f"up{{{SENSOR}}}", "{{instance}}")], w=8),
        timeseries("Scrape duration", [target(f"scrape_duration_seconds{{{SENSOR}}}", "{{instance}}")], unit="s", w=8),
        timeseries(
            "Samples per scrape",
            [target(f"scrape_samples_scraped{{{SENSOR}}}", "{{instance}}")],
            w=8,
            description="Low and steady by design: no series per client or per address.",
        ),
    ]
    return dashboard(
        "shadowai-sensor-health",
        "ShadowAI / Sensor health",
        "Is the sensor up, does it keep up with the link, are its tables bounded, does the database keep up.",
        layout(panels),
        sensor_vars(),
        "now-6h",
    )


DASHBOARDS = {"ai-usage.json": ai_usage, "sensor-health.json": sensor_health}


def render(build: Any) -> str:
    """One dashboard as the committed text."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def expressions(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield panel["title"], t["expr"]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date, run python3 grafana/build.py: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
