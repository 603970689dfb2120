"""`shadowai report` over a chosen period and grouping, and `shadowai export` to Parquet so that
the exports of several sensors are reported on as one table (issue 2 §7, DESIGN.md)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC
from pathlib import Path

import pytest
from _cli import PY, ROOT, SAMPLE, assert_one_line_error, shadowai

LATER_START = "2026-11-05T14:00:00Z"  # the second capture: three days after the sample, another hour


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def later(state: Path) -> Path:
    """A short second capture of the project's generator, on another day."""
    import subprocess

    out = state / "later.pcap"
    subprocess.run(
        [PY, "-m", "detector.synth", "office", str(out), "--clients", "8", "--duration", "20", "--rate", "6",
         "--seed", "3", "--start", LATER_START, "--no-specials", "--large-upload", "0", "--snap-bulk", "200"],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def analysed(state: Path, later: Path) -> tuple[Path, list[dict]]:
    """Both captures analysed into one database; the database and the events printed."""
    path = state / "usage.duckdb"
    r = shadowai("analyze", SAMPLE, later, "--db", path, "--format", "jsonl", "--sensor", "town-hall", state=state)
    assert r.returncode == 0, r.stderr
    return path, [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def db(analysed: tuple[Path, list[dict]]) -> Path:
    return analysed[0]


@pytest.fixture(scope="module")
def events(analysed: tuple[Path, list[dict]]) -> list[dict]:
    return _reported(analysed[1])


def _reported(events: list[dict]) -> list[dict]:
    """The events a report counts: attributed flows and lookups, and flows to encrypted-DNS
    resolvers (whose resolver ids the report lists among the services)."""
    return [e for e in events if e["service"] and e["kind"] in ("flow", "dns", "encrypted-dns")]


def _report(*args: object, state: Path) -> list[dict]:
    r = shadowai("report", *args, "--format", "json", state=state)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def _per(rows: list[dict], key: str) -> dict[str, tuple[int, int, int, int]]:
    return {row[key]: (row["flows"], row["dns_lookups"], row["bytes_up"], row["bytes_down"]) for row in rows}


def _expected(events: list[dict], key: str) -> dict[str, tuple[int, int, int, int]]:
    out: dict[str, list[int]] = {}
    for e in events:
        acc = out.setdefault(e[key], [0, 0, 0, 0])
        acc[0] += e["kind"] != "dns"
        acc[1] += e["kind"] == "dns"
        acc[2] += e["bytes_up"]
        acc[3] += e["bytes_down"]
    return {k: tuple(v) for k, v in out.items()}


def test_report_json_per_service_equals_the_analysed_events(db: Path, state: Path, events: list[dict]) -> None:
    assert _per(_report("--db", db, state=state), "service") == _expected(events, "service")


def test_report_by_department_equals_the_analysed_events(db: Path, state: Path, events: list[dict]) -> None:
    rows = _report("--db", db, "--by", "department", state=state)
    assert _per(rows, "department") == _expected(events, "department")
    clients = Counter()
    for dept in {e["department"] for e in events}:
        clients[dept] = len({e["client"] for e in events if e["department"] == dept})
    assert {row["department"]: row["clients"] for row in rows} == dict(clients)


@pytest.mark.parametrize(
    ("since", "until", "which"),
    [
        ("2026-11-03", None, "later"),
        (None, "2026-11-03", "sample"),
        ("2026-11-02T09:00", "2026-11-02T10:00", "sample"),
        ("2026-11-05T15:00", None, "none"),
        ("2026-11-02", "2026-11-06", "both"),
    ],
)
def test_report_since_and_until_choose_the_period(db: Path, state: Path, events: list[dict], since, until, which) -> None:
    args = ["--db", db] + (["--since", since] if since else []) + (["--until", until] if until else [])
    chosen = {
        "later": [e for e in events if e["ts"] >= "2026-11-05"],
        "sample": [e for e in events if e["ts"] < "2026-11-03"],
        "both": events,
        "none": [],
    }[which]
    assert chosen or which == "none"
    assert _per(_report(*args, state=state), "service") == _expected(chosen, "service")


def test_report_since_accepts_an_age(db: Path, state: Path, events: list[dict]) -> None:
    from datetime import datetime

    days = (datetime.now(UTC) - datetime(2026, 11, 2, tzinfo=UTC)).days + 2
    assert _per(_report("--db", db, "--since", f"{max(days, 1)}d", state=state), "service") == _expected(events, "service")


def test_report_table_is_the_default_and_names_the_services(db: Path, state: Path, events: list[dict]) -> None:
    r = shadowai("report", "--db", db, state=state)
    assert r.returncode == 0, r.stderr
    assert all(service in r.stdout for service in {e["service"] for e in events})


def test_report_without_a_database_is_one_error_line(tmp_path: Path) -> None:
    r = shadowai("report", "--db", tmp_path / "none.duckdb", state=tmp_path)
    assert_one_line_error(r, 2, "none.duckdb", "no such database")


def test_report_with_a_bad_period_is_a_usage_error_without_traceback(db: Path, state: Path) -> None:
    r = shadowai("report", "--db", db, "--since", "last tuesday", state=state)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "last tuesday" in r.stderr


# -- Parquet exports of several sensors ---------------------------------------------------------


@pytest.fixture(scope="module")
def two_sensors(state: Path, later: Path) -> tuple[Path, list[dict]]:
    """The short capture analysed by two sensors (same pseudonym key), each exported into one
    root; the export root and the events of one sensor."""
    root = state / "exports"
    for sensor in ("north", "south"):
        db = state / f"{sensor}.duckdb"
        r = shadowai("analyze", later, "--db", db, "--sensor", sensor, "--format", "jsonl", state=state)
        assert r.returncode == 0, r.stderr
        one = _reported([json.loads(line) for line in r.stdout.splitlines()])
        r = shadowai("export", "--parquet", root, "--db", db, state=state)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("exported 2 Parquet file(s)")  # events and hourly, one day
    return root, one


def test_export_partitions_by_sensor_and_day(two_sensors: tuple[Path, list[dict]]) -> None:
    day = LATER_START[:10]
    for table in ("events", "hourly"):
        for sensor in ("north", "south"):
            assert list((two_sensors[0] / table / f"sensor={sensor}" / f"day={day}").glob("*.parquet")), (table, sensor)


def test_report_reads_the_parquet_exports_of_two_sensors_as_one_table(two_sensors: tuple[Path, list[dict]], state: Path) -> None:
    root, one = two_sensors
    assert one
    expected = {k: tuple(2 * n for n in v) for k, v in _expected(one, "service").items()}
    rows = _report("--db", root, state=state)
    assert _per(rows, "service") == expected
    # The same clients seen by both sensors are the same pseudonyms: counted once.
    assert {row["service"]: row["clients"] for row in rows} == {
        s: len({e["client"] for e in one if e["service"] == s}) for s in expected
    }


def test_exporting_a_day_again_replaces_it_and_since_limits_the_days(two_sensors: tuple[Path, list[dict]], state: Path) -> None:
    root = two_sensors[0]
    before = _report("--db", root, state=state)
    r = shadowai("export", "--parquet", root, "--db", state / "north.duckdb", state=state)
    assert r.returncode == 0, r.stderr
    assert _report("--db", root, state=state) == before
    r = shadowai("export", "--parquet", root, "--db", state / "north.duckdb", "--since", "2026-11-06", state=state)
    assert r.returncode == 0 and r.stdout.startswith("exported 0 Parquet file(s)"), r.stdout
    assert _report("--db", root, state=state) == before


def test_export_without_a_database_is_one_error_line(tmp_path: Path) -> None:
    r = shadowai("export", "--parquet", tmp_path / "out", "--db", tmp_path / "none.duckdb", state=tmp_path)
    assert_one_line_error(r, 2, "none.duckdb", "no such database")
