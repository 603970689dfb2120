"""Golden /metrics (issue 4): `shadowai run --pcap` replays the sample capture through the
daemon path and keeps serving; once every packet is decoded and every flow reported, the
endpoint's stable series are compared with baselines/metrics.txt (`pytest --update-golden`
rewrites it; review the diff). Then SIGTERM must give a clean exit, and no label may carry
an address, a hostname or a client pseudonym (cardinality and privacy)."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from _cli import SAMPLE, TRUTH, Daemon, free_port

BASELINE = Path(__file__).resolve().parent / "baselines" / "metrics.txt"
TRUTH_DATA = json.loads(TRUTH.read_text())

# Series whose values depend on the machine, the clock or the run, not on the capture.
VOLATILE = re.compile(
    r"^(process_|python_|shadowai_scrape_errors)"  # the process, the interpreter, scrape hiccups
    r"|_created[ {]"  # creation timestamps prometheus-client may add
    r"|_timestamp_seconds[ {]"  # wall-clock times (last reload)
    r"|_seconds(_bucket|_sum|_count)?[ {]"  # latencies (DuckDB write duration)
)
_SAMPLE_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
# Values that are the build's or the rule set's own, not the capture's.
_NORMALISE = [
    (re.compile(r'(shadowai_build_info\{.*?)python="[^"]*"'), r'\1python="*"'),
    (re.compile(r'(shadowai_rules_info\{.*?)version="[^"]*"'), r'\1version="*"'),
]
_HOSTNAME = re.compile(r"(?=.*[a-z])[a-z0-9-]+(\.[a-z0-9-]+)+\.?", re.IGNORECASE)
_PSEUDONYM = re.compile(r"c-[0-9a-f]{16}")


def stable_series(text: str) -> str:
    """The TYPE lines and samples of an exposition, volatile series dropped, sorted."""
    keep = []
    for line in text.splitlines():
        if not line or line.startswith("# HELP") or VOLATILE.search(line):
            continue
        if line.startswith("# TYPE") and VOLATILE.search(line.split()[2] + " "):
            continue
        for pattern, repl in _NORMALISE:
            line = pattern.sub(repl, line)
        keep.append(line)
    return "\n".join(sorted(keep)) + "\n"


def labels(text: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every sample of an exposition."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE_LINE.match(line)
        if m and m["labels"]:
            out += [(m["name"], lm["key"], lm["value"]) for lm in _LABEL.finditer(m["labels"])]
    return out


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(metrics text after the replay, exit status on SIGTERM, daemon output)."""
    state = tmp_path_factory.mktemp("golden-metrics")
    for _attempt in range(3):  # a free port can be taken by another process before the daemon binds it
        port = free_port()
        with Daemon("--pcap", SAMPLE, "--metrics-listen", f"127.0.0.1:{port}", "--no-db", "--sensor", "golden",
                    state=state, port=port) as daemon:  # fmt: skip
            # The replay's end flushes every flow, so the flow counter reaches the truth's count.
            try:
                daemon.wait_for(
                    lambda: (text := daemon.metrics())
                    and daemon.sample("shadowai_decoded_packets_total", text) == TRUTH_DATA["packets"]
                    and daemon.sample("shadowai_flows_total", text) == TRUTH_DATA["flows"],
                    "the replay to be decoded and every flow reported",
                    timeout=120,
                )
            except AssertionError:
                if "Address already in use" in daemon.output():
                    continue
                raise
            text = daemon.metrics()
            code = daemon.stop(signal.SIGTERM)
            return text, code, daemon.output()
    raise AssertionError("no free port for the metrics endpoint")


def test_metrics_after_replaying_the_sample_match_the_baseline(replayed, update_golden: bool) -> None:
    got = stable_series(replayed[0])
    if update_golden:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_text(got)
        return
    assert BASELINE.exists(), "no baseline: run pytest --update-golden"
    want = BASELINE.read_text()
    missing = sorted(set(want.splitlines()) - set(got.splitlines()))
    extra = sorted(set(got.splitlines()) - set(want.splitlines()))
    assert got == want, f"not in /metrics: {missing[:20]}\nnot in the baseline: {extra[:20]}"


def test_the_daemon_stops_cleanly_on_sigterm(replayed) -> None:
    _, code, output = replayed
    assert code == 0, output
    assert "Traceback" not in output and "stopped:" in output


def test_no_metric_label_carries_an_address_a_hostname_or_a_client(replayed) -> None:
    found = labels(replayed[0])
    assert found, "the exposition has labelled series"
    bad = [
        (metric, key, value)
        for metric, key, value in found
        if key != "le" and (_is_address(value) or _HOSTNAME.fullmatch(value) or _PSEUDONYM.fullmatch(value))
    ]
    assert not bad, bad
    assert not {key for _, key, _ in found} & {"client", "ip", "address", "host", "hostname", "server", "server_name"}


def test_every_metric_is_named_by_the_contract(replayed) -> None:
    names = {m["name"] for line in replayed[0].splitlines() if (m := _SAMPLE_LINE.match(line))}
    assert names and not [n for n in names if not n.startswith("shadowai_")]
    types = dict(line.split()[2:4] for line in replayed[0].splitlines() if line.startswith("# TYPE"))
    assert not [name for name, kind in types.items() if kind == "counter" and not name.endswith("_total")]
    assert not [name for name, kind in types.items() if kind != "counter" and name.endswith("_total")]
