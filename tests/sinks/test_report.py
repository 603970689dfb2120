"""Reports over the store and over Parquet exports of several sensors, and their renderings."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _store_helpers import make_event

from detector.sinks.report import (
    REPORTS,
    candidates,
    human_bytes,
    render,
    render_csv,
    render_json,
    render_table,
    summary_sql,
    usage_summary,
)
from detector.sinks.store import SchemaVersionError, Store, StoreError

# A small municipality morning: three services, two departments, one unattributed name.
MORNING = [
    # chatgpt (unsanctioned, US): 2 flows + 1 lookup, clients c1 and c2, in ict and hr
    {"ts": "2024-05-01T09:10:00Z", "client": "c1", "bytes_up": 3_000_000, "bytes_down": 9_000_000},
    {"ts": "2024-05-01T09:20:00Z", "client": "c2", "department": "hr", "bytes_up": 1_000_000, "bytes_down": 1_000},
    {"ts": "2024-05-01T09:05:00Z", "client": "c1", "kind": "dns", "bytes_up": 0, "bytes_down": 0, "evidence": "dns"},
    # copilot (sanctioned, US): 3 flows from c3, more flows but fewer bytes up
    *[
        {
            "ts": f"2024-05-01T10:0{i}:00Z",
            "client": "c3",
            "service": "copilot",
            "vendor": "Microsoft",
            "policy": "sanctioned",
            "server_name": "copilot.microsoft.com",
            "bytes_up": 100_000,
            "bytes_down": 2_000_000,
        }
        for i in range(3)
    ],
    # mistral (tolerated, EU): 1 flow from hr
    {
        "ts": "2024-05-01T10:30:00Z",
        "client": "c4",
        "department": "hr",
        "service": "mistral",
        "vendor": "Mistral AI",
        "jurisdiction": "EU",
        "policy": "tolerated",
        "server_name": "chat.mistral.ai",
        "bytes_up": 100_000,
        "bytes_down": 10,
    },
    # deepseek (blocked, CN): first seen on 2 May
    {
        "ts": "2024-05-02T08:00:00Z",
        "client": "c2",
        "department": "hr",
        "service": "deepseek",
        "vendor": "DeepSeek",
        "jurisdiction": "CN",
        "policy": "blocked",
        "server_name": "chat.deepseek.com",
        "bytes_up": 50_000,
        "bytes_down": 1,
    },
    # not in the catalogue: excluded unless asked for; a candidate: never in the summary
    {
        "ts": "2024-05-01T09:00:00Z",
        "client": "c1",
        "service": "",
        "vendor": "",
        "policy": "",
        "jurisdiction": "",
        "server_name": "example.org",
        "bytes_up": 7_000_000_000,
    },
    {
        "ts": "2024-05-01T09:00:00Z",
        "client": "c1",
        "kind": "candidate",
        "service": "",
        "server_name": "newai.example",
        "bytes_up": 9_000_000_000,
    },
]


@pytest.fixture(scope="module")
def morning_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("morning") / "shadowai.duckdb"
    with Store(path, sensor="town-hall") as store:
        store.write_events([make_event(**fields) for fields in MORNING])
    return path


@pytest.fixture
def db(morning_db: Path, tmp_path: Path) -> Path:
    """A private copy of the morning's store (built once per module: opening DuckDB costs)."""
    path = tmp_path / "shadowai.duckdb"
    shutil.copyfile(morning_db, path)
    return path


def by(rows: list[dict], key: str) -> dict:
    return {row[key]: row for row in rows}


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def test_service_summary_has_the_figures_and_properties_of_each_service(db: Path) -> None:
    rows = usage_summary(db)
    assert [r["service"] for r in rows] == ["chatgpt", "copilot", "mistral", "deepseek"]
    assert rows[0] == {
        "service": "chatgpt",
        "vendor": "OpenAI",
        "jurisdiction": "US",
        "policy": "unsanctioned",
        "flows": 2,
        "dns_lookups": 1,
        "clients": 2,
        "departments": 2,
        "bytes_up": 4_000_000,
        "bytes_down": 9_001_000,
    }


def test_rows_are_ordered_by_bytes_up_then_flows(db: Path) -> None:
    rows = usage_summary(db)
    # copilot and mistral both sent 100 kB up per flow: copilot's 300 kB comes first.
    keys = [(r["bytes_up"], r["flows"]) for r in rows]
    assert keys == sorted(keys, key=lambda k: (-k[0], -k[1]))


def test_period_is_whole_hours_from_start_to_end(db: Path) -> None:
    # 09:30-10:10 covers the hours 09:00 and 10:00 in full.
    rows = usage_summary(db, datetime(2024, 5, 1, 9, 30, tzinfo=UTC), datetime(2024, 5, 1, 10, 10, tzinfo=UTC))
    assert {r["service"] for r in rows} == {"chatgpt", "copilot", "mistral"}
    rows = usage_summary(db, datetime(2024, 5, 1, 10, tzinfo=UTC), datetime(2024, 5, 1, 11, tzinfo=UTC))
    assert {r["service"] for r in rows} == {"copilot", "mistral"}


def test_department_report_counts_services_instead_of_departments(db: Path) -> None:
    rows = by(usage_summary(db, group_by="department"), "department")
    assert set(rows) == {"ict", "hr"}
    assert rows["hr"] == {
        "department": "hr",
        "flows": 3,
        "dns_lookups": 0,
        "clients": 2,
        "services": 3,
        "bytes_up": 1_150_000,
        "bytes_down": 1_011,
    }


def test_jurisdiction_report(db: Path) -> None:
    rows = by(usage_summary(db, group_by="jurisdiction"), "jurisdiction")
    assert {k: (v["flows"], v["services"]) for k, v in rows.items()} == {"US": (5, 2), "EU": (1, 1), "CN": (1, 1)}


def test_new_services_are_those_first_seen_in_the_period(db: Path) -> None:
    rows = usage_summary(db, datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC), group_by="new")
    assert [(r["service"], r["first_seen"]) for r in rows] == [("deepseek", datetime(2024, 5, 2, 8))]


def test_top_unsanctioned_keeps_unsanctioned_and_blocked_services(db: Path) -> None:
    rows = usage_summary(db, group_by="unsanctioned")
    assert [(r["service"], r["policy"]) for r in rows] == [("chatgpt", "unsanctioned"), ("deepseek", "blocked")]
    assert len(usage_summary(db, group_by="unsanctioned", limit=1)) == 1


def test_two_dimensions_and_time_buckets_group_together(db: Path) -> None:
    rows = usage_summary(db, group_by="day,policy")
    assert rows == usage_summary(db, group_by=("day", "policy"))
    assert {(str(r["day"]), r["policy"]): r["flows"] for r in rows} == {
        ("2024-05-01", "unsanctioned"): 2,
        ("2024-05-01", "sanctioned"): 3,
        ("2024-05-01", "tolerated"): 1,
        ("2024-05-02", "blocked"): 1,
    }


def test_unattributed_events_show_only_when_asked(db: Path) -> None:
    rows = usage_summary(db, include_unattributed=True)
    assert rows[0]["service"] == "" and rows[0]["bytes_up"] == 7_000_000_000


def test_after_retention_figures_come_from_the_hourly_aggregates(db: Path) -> None:
    exact = usage_summary(db)
    with Store(db) as store:
        store.enforce_retention(datetime(2024, 6, 15, tzinfo=UTC))
    kept = usage_summary(db)
    assert [r["flows"] for r in kept] == [r["flows"] for r in exact]
    assert [r["bytes_up"] for r in kept] == [r["bytes_up"] for r in exact]
    # Distinct clients cannot be summed over hours: a lower bound, named as one.
    assert "clients" not in kept[0] and kept[0]["clients_at_least"] == 1


def test_the_basis_can_be_forced(db: Path) -> None:
    assert "clients_at_least" in usage_summary(db, basis="hourly")[0]
    assert "clients" in usage_summary(db, basis="events")[0]


def test_unknown_group_by_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"group_by must be one of \['department', 'jurisdiction', 'new'"):
        summary_sql(("client",), "events")


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_every_report_kind_renders_in_every_format(db: Path, name: str) -> None:
    rows = usage_summary(db, group_by=name)
    assert rows
    assert render(rows, "table", group_by=name).startswith(REPORTS[name].title + "\n\n")
    assert json.loads(render(rows, "json")) and render(rows, "csv").count("\n") == len(rows) + 1


def test_candidates_report_lists_uncatalogued_ai_names(db: Path) -> None:
    rows = candidates(db)
    assert [(r["name"], r["count"]) for r in rows] == [("newai.example", 1)]


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no shadowai database"):
        usage_summary(tmp_path / "absent.duckdb")


def test_reader_refuses_a_database_from_newer_code(db: Path) -> None:
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (42, now()::TIMESTAMP, 'future')")
    con.close()
    with pytest.raises(SchemaVersionError, match="schema version 42"):
        usage_summary(db)


# ---------------------------------------------------------------------------
# Parquet exports of two sensors, read as one table
# ---------------------------------------------------------------------------


def test_report_over_two_sensors_parquet_exports_matches_one_combined_store(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    town_hall = [make_event(**fields) for fields in MORNING]
    library = [
        make_event(ts="2024-05-01T09:15:00Z", client="l1", department="library", bytes_up=500),
        make_event(ts="2024-05-01T09:16:00Z", client="l2", department="library", bytes_up=500),
    ]
    combined = tmp_path / "combined.duckdb"
    with Store(combined) as store:
        store.write_events(
            [replace(e, sensor="town-hall") for e in town_hall] + [replace(e, sensor="library") for e in library]
        )
    for sensor, events in (("town-hall", town_hall), ("library", library)):
        with Store(tmp_path / f"{sensor}.duckdb", sensor=sensor) as store:
            store.write_events(events)
            store.export_parquet(out)
    assert sorted(p.name for p in (out / "hourly").iterdir()) == ["sensor=library", "sensor=town-hall"]

    from_parquet = usage_summary(out)
    assert from_parquet == usage_summary(combined)
    chatgpt = by(from_parquet, "service")["chatgpt"]
    assert (chatgpt["flows"], chatgpt["clients"], chatgpt["departments"]) == (4, 4, 3)
    sensors = by(usage_summary(out, group_by=("sensor",)), "sensor")
    assert {k: v["flows"] for k, v in sensors.items()} == {"town-hall": 7, "library": 2}
    assert [r["name"] for r in candidates(out)] == ["newai.example"]


def test_report_over_an_hourly_only_export_uses_the_aggregates(tmp_path: Path, db: Path) -> None:
    out = tmp_path / "exports"
    with Store(db, sensor="town-hall") as store:
        store.export_parquet(out)
    shutil.rmtree(out / "events")
    rows = usage_summary(out)
    assert rows[0]["service"] == "chatgpt" and rows[0]["clients_at_least"] == 1


def test_report_over_an_empty_directory_is_empty(tmp_path: Path) -> None:
    assert usage_summary(tmp_path) == []


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1234, "1.2 kB"),
        (9_960, "10 kB"),
        (999_999, "1.0 MB"),
        (1_200_000, "1.2 MB"),
        (34_000_000_000, "34 GB"),
        (None, "-"),
    ],
)
def test_human_bytes_reads_like_ls_h(count: int | None, text: str) -> None:
    assert human_bytes(count) == text


def test_table_is_fixed_width_with_human_bytes(db: Path) -> None:
    table = render_table(usage_summary(db))
    lines = table.splitlines()
    assert lines[0].split() == [
        "SERVICE",
        "VENDOR",
        "JURISDICTION",
        "POLICY",
        "FLOWS",
        "DNS",
        "CLIENTS",
        "DEPTS",
        "UP",
        "DOWN",
    ]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["chatgpt", "OpenAI", "US", "unsanctioned", "2", "1", "2", "2", "4.0", "MB", "9.0", "MB"]
    # Numbers are right-aligned: every row ends at the same column.
    assert len({len(line) for line in lines[2:]}) == 1


def test_table_of_nothing_says_so() -> None:
    assert render_table([]) == "(no usage in this period)\n"


def test_json_and_csv_carry_raw_numbers_and_iso_times(db: Path) -> None:
    rows = usage_summary(db, datetime(2024, 5, 2, tzinfo=UTC), group_by="new")
    assert json.loads(render_json(rows)) == [
        {
            "service": "deepseek",
            "vendor": "DeepSeek",
            "jurisdiction": "CN",
            "policy": "blocked",
            "flows": 1,
            "dns_lookups": 0,
            "clients": 1,
            "departments": 1,
            "bytes_up": 50000,
            "bytes_down": 1,
            "first_seen": "2024-05-02T08:00:00",
        }
    ]
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert parsed[0]["bytes_up"] == "50000" and parsed[0]["first_seen"] == "2024-05-02T08:00:00"
