"""Event factory and read helpers shared by the store and report tests."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import duckdb

from detector.model import UsageEvent

_ids = itertools.count()

BASE: dict[str, Any] = {
    "ts": "2024-05-01T10:15:00+00:00",
    "kind": "flow",
    "client": "c-1",
    "department": "ict",
    "service": "chatgpt",
    "vendor": "OpenAI",
    "category": "chat",
    "jurisdiction": "US",
    "policy": "unsanctioned",
    "server_name": "chatgpt.com",
    "server_ip": "104.18.32.47",
    "server_port": 443,
    "transport": "tcp",
    "evidence": "tls-sni",
    "bytes_up": 1000,
    "bytes_down": 5000,
    "packets": 12,
    "duration": 1.5,
    "ja4": "t13d1516h2_8daaf6152771_02713d6af862",
    "alpn": "h2",
    "pattern": "domain:chatgpt.com",
    "sensor": "",
}


def make_event(**fields: Any) -> UsageEvent:
    """A valid UsageEvent; a unique event_id unless one is given."""
    values = {**BASE, "event_id": f"ev-{next(_ids)}", **fields}
    return UsageEvent(**values)


def query(path: Path, sql: str, params: Any = None) -> list[tuple]:
    """Run one query on a closed store file, read-only."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()
