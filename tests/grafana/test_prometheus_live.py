"""Every dashboard query and every recording rule returns data from a real Prometheus that
scrapes a real /metrics endpoint (Debian's prometheus, on loopback, 1 s scrape interval).

Two endpoints: the daemon itself (`shadowai run --pcap samples/office-sample.pcap
--metrics-listen ...`), and the daemon's collector fed with traffic on every source while it is
scraped. The replay ends before rates can form and has no capture interface or SOC sink, so
against the daemon every query over metrics it exposes must return series; against the fed
collector every query must return a number.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _dash import ROOT, RULES, Feed, metric_names, panel_queries, recording_rules, substitute, variable_queries

from detector.sinks.metrics import new_registry, serve

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)"),
]

# Long enough for rate() over every window the queries use to have two samples, and for the
# recording rules to have run on them; the loop below ends as soon as all queries answer.
DEADLINE = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def sensor() -> Iterator[str]:
    """A /metrics endpoint fed with traffic every 100 ms until the tests end."""
    feed = Feed()
    feed.step()
    server = serve("127.0.0.1:0", new_registry(feed.metrics))
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            feed.step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.shutdown()
        server.server_close()


def start_prometheus(target: str, d: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Prometheus scraping `target` every second with rules.yml loaded; returns it and its base URL."""
    assert PROMETHEUS is not None
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "shadowai", "static_configs": [{"targets": [target]}]}],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (d / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={d / 'prometheus.yml'}",
                f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("prometheus did not start: " + (d / "prometheus.log").read_text())
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def prometheus(sensor: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the fed collector."""
    proc, base = start_prometheus(sensor, tmp_path_factory.mktemp("prometheus"))
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def daemon_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`shadowai run --pcap` on the sample capture, scraped by Prometheus from its start;
    yields (Prometheus URL, the daemon's /metrics text once the replay is done)."""
    sample = ROOT / "samples" / "office-sample.pcap"
    if not sample.exists():
        pytest.skip(f"{sample} is absent (python -m detector.synth office writes it)")
    d = tmp_path_factory.mktemp("daemon")
    listen = f"127.0.0.1:{free_port()}"
    proc, base = start_prometheus(listen, d)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with (d / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "detector",
                "run",
                "--pcap",
                str(sample),
                "--metrics-listen",
                listen,
                "--db",
                str(d / "usage.duckdb"),
                "--key-file",
                str(d / "pseudonym.key"),
                "--sensor",
                "test-sensor",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=d,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "replay finished" not in (d / "daemon.log").read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail("shadowai run --pcap failed: " + (d / "daemon.log").read_text())
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as r:
            text = r.read().decode()
        yield base, text
    finally:
        stop(daemon)
        stop(proc)


def instant(base: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_value(result: list[dict[str, Any]]) -> bool:
    """At least one series with a real number (not NaN from 0/0)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def wait_for_all(check: dict[str, Any]) -> dict[str, str]:
    """Run every check until all pass or the deadline; returns the ones still failing."""
    failing: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE
    pending = dict(check)
    while pending and time.monotonic() < deadline:
        for key, fn in list(pending.items()):
            ok, detail = fn()
            if ok:
                del pending[key]
            else:
                failing[key] = detail
        if pending:
            time.sleep(0.5)
    return {k: failing[k] for k in pending}


def test_prometheus_scrapes_the_sensor(prometheus: str, sensor: str) -> None:
    def up() -> tuple[bool, str]:
        result = instant(prometheus, 'up{job="shadowai"}')
        return bool(result) and result[0]["value"][1] == "1", str(result)

    assert not wait_for_all({"up": up})
    targets = get_json(prometheus + "/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"] and targets[0]["labels"]["instance"] == sensor


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    checks = {}
    for name, title, expr in panel_queries():
        query = substitute(expr)

        def check(query: str = query) -> tuple[bool, str]:
            result = instant(prometheus, query)
            return has_value(result), f"{query} -> {result}"

        checks[f"{name} / {title} / {expr}"] = check
    failing = wait_for_all(checks)
    assert not failing, "\n".join(f"{k}\n    {v}" for k, v in failing.items())


def test_every_template_variable_lists_values(prometheus: str) -> None:
    checks = {}
    for name, var, selector, label in variable_queries():
        params = urllib.parse.urlencode({"match[]": substitute(selector)})

        def check(params: str = params, label: str = label) -> tuple[bool, str]:
            values = get_json(f"{prometheus}/api/v1/label/{label}/values?{params}")["data"]
            return bool(values) and all(values), str(values)

        checks[f"{name} / ${var}"] = check
    failing = wait_for_all(checks)
    assert not failing, failing


def test_every_recording_rule_returns_data(prometheus: str) -> None:
    checks = {}
    for record, expr in recording_rules().items():

        def check(record: str = record, expr: str = expr) -> tuple[bool, str]:
            recorded, direct = instant(prometheus, record), instant(prometheus, expr)
            return has_value(recorded) and has_value(direct), f"{record}: {recorded} / {direct}"

        checks[record] = check
    failing = wait_for_all(checks)
    assert not failing, failing
    regions = {s["metric"]["region"] for s in instant(prometheus, "region:shadowai_ai_bytes:rate5m")}
    assert regions == {"EU", "US", "CN", "other"}


def test_rules_load_without_evaluation_errors(prometheus: str) -> None:
    def healthy() -> tuple[bool, str]:
        groups = get_json(prometheus + "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
        return len(rules) == 11 and not bad, str(bad or len(rules))

    assert not wait_for_all({"rules": healthy})


def exposed(text: str) -> set[str]:
    """Sample names in a /metrics text that have at least one sample."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_daemon_replay_answers_every_query_over_what_it_exposes(daemon_prometheus: tuple[str, str]) -> None:
    base, text = daemon_prometheus
    names = exposed(text)
    # Names a recording rule reads count as exposed when all its inputs are.
    rules = recording_rules()
    for record, expr in rules.items():
        if metric_names(expr) <= names:
            names.add(record)
    names |= {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
    checks, skipped = {}, []
    for name, title, expr in panel_queries():
        if not metric_names(expr) <= names:
            skipped.append(f"{name} / {title}")
            continue
        query = substitute(expr)

        def check(query: str = query) -> tuple[bool, str]:
            result = instant(base, query)
            return bool(result), f"{query} -> {result}"

        checks[f"{name} / {title} / {expr}"] = check
    # The replay feeds every AI-usage panel; only capture-interface and SOC-sink panels may
    # lack their source (no interface, no alert sink configured).
    assert not [s for s in skipped if s.startswith("ai-usage")], skipped
    assert len(checks) >= 40, skipped
    print(f"daemon replay: {len(checks)} queries checked; no source in a replay: {skipped}")
    failing = wait_for_all(checks)
    assert not failing, "\n".join(f"{k}\n    {v}" for k, v in failing.items())
    flows = instant(base, 'sum by (policy) (shadowai_ai_flows_total{job="shadowai"})')
    assert {s["metric"]["policy"] for s in flows} >= {"sanctioned", "unsanctioned"}
    assert not any("p-" in v or "10." in v for s in flows for v in s["metric"].values())
