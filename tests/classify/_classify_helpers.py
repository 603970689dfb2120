"""Locations and helpers shared by tests/classify (a plain module: conftest is not importable by name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
POLICY_EXAMPLE = RULES / "policy.example.yaml"
CAPTURES = REPO.parent / "shared" / "captures"
TESTDATA = Path(__file__).resolve().parent / "testdata"
TEST_KEY = bytes(range(32))

# GROUND_TRUTH.json keys that hold host names (as keys of a name -> frame-count mapping).
NAME_KEYS = (
    "sni",
    "sni_tls",
    "sni_quic",
    "sni_gquic",
    "dns",
    "dns_response_qname",
    "dns_cname",
    "http_host",
    "http2_authority",
    "ndpi_flow_hostnames",
    "ndpi_hostnames_not_seen_by_tshark",
)


def capture_names(folder: str) -> dict[str, set[str]]:
    """Host names per capture file under `folder/` in GROUND_TRUTH.json; skips if absent."""
    truth = CAPTURES / "GROUND_TRUTH.json"
    if not truth.is_file():
        pytest.skip(f"{truth} not present (shared captures are not part of the repository)")
    data = json.loads(truth.read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for file, entry in data.items():
        if file.startswith(folder + "/"):
            out[file] = {name for key in NAME_KEYS for name in (entry.get(key) or {})}
    return out
