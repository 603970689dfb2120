"""Golden tests: each trace the project's generator writes → the events and anomalies the
sensor reports, compared with a baseline. `pytest --update-golden` rewrites the baselines
(review the diff before committing it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import make_config, run_capture  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACES = sorted(p for p in (HERE / "traces").glob("*.pcap*"))
BASELINES = HERE / "baselines"
# A fixed pseudonym key, so that client pseudonyms in the baselines are stable.
FIXED_KEY = bytes(range(32))


@pytest.fixture
def golden_config(tmp_path: Path):
    key = tmp_path / "key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, FIXED_KEY)
    os.close(fd)
    return make_config(tmp_path)


def _render(events, stats) -> tuple[str, str]:
    lines = [json.dumps({f: getattr(e, f) for f in e.__slots__}, sort_keys=True) for e in events]
    lines.sort()
    coverage = {
        "anomalies": dict(sorted(stats.anomalies.items())),
        "flows_named": stats.flows_named,
        "flows_dns_only": stats.flows_dns_only,
        "flows_blind": dict(sorted(stats.flows_blind.items())),
    }
    return "\n".join(lines) + "\n", json.dumps(coverage, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_trace_matches_its_baseline(trace: Path, golden_config, update_golden: bool) -> None:
    events, stats = run_capture(trace, golden_config, include_all=True)
    got_events, got_cov = _render(events, stats)
    base = BASELINES / trace.name.split(".pcap")[0]
    if update_golden:
        base.mkdir(parents=True, exist_ok=True)
        (base / "events.jsonl").write_text(got_events)
        (base / "coverage.json").write_text(got_cov)
        return
    assert (base / "events.jsonl").exists(), f"no baseline for {trace.name}: run pytest --update-golden"
    assert got_events == (base / "events.jsonl").read_text()
    assert got_cov == (base / "coverage.json").read_text()


def test_every_baseline_has_its_trace() -> None:
    names = {t.name.split(".pcap")[0] for t in TRACES}
    stale = [d.name for d in BASELINES.iterdir() if d.is_dir() and d.name not in names] if BASELINES.exists() else []
    assert not stale, f"baselines without a trace: {stale}"
