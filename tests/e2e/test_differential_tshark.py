"""Differential test against Wireshark: every name tshark sees in the real public captures,
the sensor reports too, and every AI service of their ground truth is detected.

The ground truth (`../shared/captures/GROUND_TRUTH.json`) was made with tshark 4.0.17 with
TCP and TLS reassembly on. The sensor may see more than tshark (its README lists the places
where tshark is not the last word), never less.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from e2e_helpers import make_config, run_capture

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
TRUTH = json.loads((SHARED / "GROUND_TRUTH.json").read_text()) if (SHARED / "GROUND_TRUTH.json").exists() else {}

# Names tshark reports that the sensor deliberately does not, with the reason.
KNOWN_GAPS: dict[str, set[str]] = {}


def _host(value: str) -> str:
    value = value.lower()
    if value.startswith("["):
        return value[1:].split("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ids() -> list[str]:
    return sorted(TRUTH)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    return make_config(tmp_path_factory.mktemp("diff"))


@pytest.mark.parametrize("name", _ids() or ["(none)"])
def test_every_name_tshark_sees_the_sensor_reports(name: str, shared_captures: Path, cfg) -> None:
    truth = TRUTH[name]
    events, _ = run_capture(shared_captures / name, cfg)
    tls = {e.server_name for e in events if e.evidence in ("tls-sni", "quic-sni", "dns-cache") or e.kind == "encrypted-dns"}
    hosts = {e.server_name for e in events if e.evidence in ("http-host", "http-connect")}
    lookups = {e.server_name for e in events if e.evidence == "dns"}
    seen = tls | hosts | lookups
    gaps = KNOWN_GAPS.get(name, set())
    missing = {
        "sni": set(truth["sni"]) - tls - gaps,
        # An address in a Host header (SSDP's 239.255.255.250, bare-IP requests) names no
        # service; the sensor compares names.
        "http_host": {h for h in (_host(x) for x in truth["http_host"]) if not _is_address(h)} - hosts - gaps,
        "dns": {d.lower().rstrip(".") for d in truth["dns"]} - lookups - gaps,
    }
    assert not any(missing.values()), f"{name}: tshark saw names the sensor did not: {missing} (sensor saw {sorted(seen)[:20]})"


@pytest.mark.parametrize("name", sorted(k for k, v in TRUTH.items() if v["ai_names"]) or ["(none)"])
def test_every_ai_service_in_the_ground_truth_is_detected(name: str, shared_captures: Path, cfg) -> None:
    events, _ = run_capture(shared_captures / name, cfg, include_all=False)
    found = {e.server_name for e in events if e.service}
    expected = {entry.split(" [")[0] for entry in TRUTH[name]["ai_names"]}
    assert expected <= found


@pytest.mark.parametrize("name", sorted(k for k in TRUTH if k.startswith("negative/")) or ["(none)"])
def test_negative_captures_yield_no_ai_service(name: str, shared_captures: Path, cfg) -> None:
    events, _ = run_capture(shared_captures / name, cfg, include_all=False)
    # Encrypted-DNS events name their resolver in `service`; they are not AI use.
    assert not [(e.server_name, e.service) for e in events if e.service and e.kind in ("flow", "dns")]
