"""Dashboards, provisioning and Prometheus rules, checked without a running Prometheus:
generated JSON is committed unchanged, importable shape, known metric names only, PromQL that
promtool accepts, and the rules' own unit tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _dash import (
    EXAMPLE_CONFIG,
    GRAFANA,
    PROMETHEUS_SERIES,
    RULES,
    RULES_TESTS,
    alerting_rules,
    dashboards,
    fed_names,
    load_build,
    metric_names,
    panel_queries,
    recording_rules,
    substitute,
    variable_queries,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_committed_dashboards_equal_the_generator_output() -> None:
    build = load_build()
    for name, fn in build.DASHBOARDS.items():
        committed = (GRAFANA / "dashboards" / name).read_text(encoding="utf-8")
        assert committed == build.render(fn), f"{name} is stale: run python3 grafana/build.py"
    assert build.main(["--check"]) == 0


@pytest.mark.parametrize("name", ["ai-usage.json", "sensor-health.json"])
def test_dashboard_has_an_importable_shape(name: str) -> None:
    dash = json.loads((GRAFANA / "dashboards" / name).read_text(encoding="utf-8"))
    assert dash["schemaVersion"] >= 38 and dash["id"] is None and dash["uid"].startswith("shadowai-")
    assert "__inputs" not in dash  # nothing to fill in on import
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "job", "sensor"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0
        covered = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "piechart", "bargauge", "table"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert t["expr"].strip()


def test_usage_dashboard_filters_by_department_and_service() -> None:
    dash = dashboards()["ai-usage.json"]
    assert {"department", "service"} <= {v["name"] for v in dash["templating"]["list"]}
    usage = [e for _, _, e in panel_queries() if "shadowai_ai_" in e or "service_department:" in e]
    assert usage and all('department=~"$department"' in e and 'service=~"$service"' in e for e in usage)
    for _, _, expr in panel_queries():
        assert 'instance=~"$sensor"' in expr, expr


def test_dashboard_queries_read_only_what_the_daemon_and_the_rules_provide() -> None:
    known = fed_names() | set(recording_rules()) | PROMETHEUS_SERIES
    for name, title, expr in panel_queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{name} / {title}: {sorted(unknown)}"
    for name, var, selector, _ in variable_queries():
        assert not metric_names(selector) - known, (name, var)


def test_rules_read_only_what_the_daemon_provides() -> None:
    known = fed_names() | set(recording_rules()) | PROMETHEUS_SERIES
    for rule, expr in {**recording_rules(), **alerting_rules()}.items():
        assert not metric_names(expr) - known, rule
    assert set(alerting_rules()) == {
        "ShadowAISensorDown",
        "ShadowAIKernelDrops",
        "ShadowAIBlindShareRising",
        "ShadowAIUnsanctionedFirstUse",
        "ShadowAIUnsanctionedUploadHigh",
    }


def test_metric_names_helper_ignores_labels_and_strings() -> None:
    expr = (
        'sum by (service) (label_replace(rate(shadowai_ai_flows_total{job=~"x", service="up"}[5m]), '
        '"region", "$1", "jurisdiction", "(EU)")) / ignoring (policy) group_left region:shadowai_ai_bytes:rate5m'
    )
    assert metric_names(expr) == {"shadowai_ai_flows_total", "region:shadowai_ai_bytes:rate5m"}


def test_provisioning_points_at_the_uid_the_dashboards_default_to() -> None:
    build = load_build()
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == build.PROVISIONED_DS_UID
    for dash in dashboards().values():
        var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
        assert var["current"]["value"] == build.PROVISIONED_DS_UID
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "shadowai.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", *(p.name for p in RULES_TESTS), cwd=RULES_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULES_TESTS)


@needs_promtool
def test_promtool_check_example_config() -> None:
    result = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query when it is a recording rule; no server needed.
    queries: list[dict[str, Any]] = [
        {"record": f"dashboard:query_{i}:check", "expr": substitute(expr)}
        for i, (_, _, expr) in enumerate(panel_queries())
    ]
    queries += [
        {"record": f"dashboard:variable_{i}:check", "expr": f"group by ({label}) ({substitute(selector)})"}
        for i, (_, _, selector, label) in enumerate(variable_queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": queries}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
