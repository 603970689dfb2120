"""`shadowai report` works while the daemon writes the same DuckDB file (issue 4 §3: DuckDB
allows one writer, so the daemon holds the file only for short write transactions)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from _cli import SAMPLE, Daemon, shadowai

REPORTS = 5  # reports that find events while the replay is still writing
REPORT_TIMEOUT = 60.0  # seconds one report may take, lock waits included (a hang fails the test)


def _totals(db: Path, state: Path) -> tuple[int, int]:
    r = shadowai("report", "--db", db, "--format", "json", state=state, timeout=REPORT_TIMEOUT)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    return sum(row["flows"] for row in rows), sum(row["dns_lookups"] for row in rows)


def test_report_succeeds_again_and_again_while_the_daemon_writes(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    cfg = tmp_path / "shadowai.yaml"
    cfg.write_text("store:\n  flush_interval: 0.5\n")  # many short writes: many chances to collide
    # At the capture's own pace the sample lasts three and a half minutes: the daemon is
    # still replaying (and writing) when the test stops it.
    with Daemon("--pcap", SAMPLE, "--speed", "recorded", "--db", db, "--metrics-listen", "", "--config", cfg,
                state=tmp_path) as daemon:  # fmt: skip
        daemon.wait_for(db.exists, "the database file")
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 90
        while sum(1 for s in seen if sum(s)) < REPORTS and time.monotonic() < deadline:
            seen.append(_totals(db, tmp_path))
            assert daemon.proc.poll() is None, daemon.output()
        assert sum(1 for s in seen if sum(s)) >= REPORTS, f"too few events reached the database while the daemon ran: {seen}"
        assert seen == sorted(seen, key=sum), "figures only grow while the daemon writes"
        assert daemon.stop(signal.SIGTERM) == 0, daemon.output()
    # SIGTERM flushed the flows still open: the report after the stop has at least as much.
    flows, lookups = _totals(db, tmp_path)
    assert flows >= seen[-1][0] and lookups >= seen[-1][1] and flows > 0
