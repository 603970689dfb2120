"""Usage reports for the CISO: one SQL builder over the store or Parquet exports, three renderers.

A source is either the sensor's DuckDB file (opened read-only, waiting out a
writer's lock) or the root of one or more `Store.export_parquet` trees
(`<root>/{events,hourly}/sensor=…/day=…/*.parquet`), which are read as one table
whatever the number of sensors.

Every report kind is the same summary with other options (`REPORTS`, chosen by
the `group_by` name). Periods
are whole UTC hours: `start` is rounded down, `end` up. Figures come from the raw
events when they are complete for the period (basis "events": exact distinct
clients) and otherwise from the hourly aggregates that outlive them (basis
"hourly": distinct counts do not add up across hours, so the clients column
becomes `clients_at_least`, the largest distinct count of any one hourly row,
which is a lower bound).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from detector.sinks.store import (
    CANDIDATES_SELECT,
    DNS_LOOKUPS_SQL,
    FLOWS_SQL,
    LOCK_TIMEOUT_SECONDS,
    apply_migrations,
    check_schema,
    connect,
    floor_hour,
    load_migrations,
    utc_naive,
)

Row = dict[str, Any]

# group_by name -> SQL over a relation with the usage_hourly columns (events get an `hour`).
DIMENSIONS: dict[str, str] = {
    "service": "service",
    "department": "department",
    "jurisdiction": "jurisdiction",
    "vendor": "vendor",
    "policy": "policy",
    "category": "category",
    "kind": "kind",
    "sensor": "sensor",
    "day": "CAST(hour AS DATE)",
    "month": "strftime(hour, '%Y-%m')",
}

# Properties of a service, listed beside it when rows are services.
SERVICE_ATTRIBUTES = ("vendor", "jurisdiction", "policy")

# The same measures from the raw events and from the hourly aggregates.
_MEASURES: dict[str, dict[str, str]] = {
    "events": {
        "flows": FLOWS_SQL,
        "dns_lookups": DNS_LOOKUPS_SQL,
        "clients": "count(DISTINCT client)",
        "bytes_up": "sum(bytes_up)",
        "bytes_down": "sum(bytes_down)",
    },
    "hourly": {
        "flows": "sum(flows)",
        "dns_lookups": "sum(dns_lookups)",
        "clients_at_least": "max(clients)",
        "bytes_up": "sum(bytes_up)",
        "bytes_down": "sum(bytes_down)",
    },
}
_RELATIONS = {
    "events": "(SELECT *, date_trunc('hour', ts) AS hour FROM events WHERE {period})",
    "hourly": "(SELECT * FROM usage_hourly WHERE {period})",
}
_PERIOD_COLUMN = {"events": "ts", "hourly": "hour"}
BASES = ("auto", "events", "hourly")


@dataclass(frozen=True, slots=True)
class ReportSpec:
    """What a `group_by` name means: the dimensions to group on, filters and a title."""

    title: str
    group_by: tuple[str, ...] = ("service",)
    policies: tuple[str, ...] | None = None
    new_only: bool = False
    limit: int | None = None


# The report kinds a CISO asks for, as group_by names (`shadowai report --by NAME`). Any
# DIMENSIONS name, or several joined by commas ("department,service"), works as well.
REPORTS: dict[str, ReportSpec] = {
    "service": ReportSpec("AI services"),
    "department": ReportSpec("AI use by department", group_by=("department",)),
    "jurisdiction": ReportSpec("AI use by vendor jurisdiction", group_by=("jurisdiction",)),
    "new": ReportSpec("AI services first seen in this period", new_only=True),
    "unsanctioned": ReportSpec(
        "Top unsanctioned and blocked AI services", policies=("unsanctioned", "blocked"), limit=10
    ),
}


def report_spec(group_by: str | Sequence[str]) -> ReportSpec:
    """The ReportSpec for a group_by name, comma list or sequence of DIMENSIONS names."""
    if isinstance(group_by, str):
        if group_by in REPORTS:
            return REPORTS[group_by]
        group_by = tuple(part.strip() for part in group_by.split(","))
    dims = tuple(group_by)
    unknown = [name for name in dims if name not in DIMENSIONS]
    if unknown or not dims:
        raise ValueError(
            f"group_by must be one of {sorted(REPORTS)} or name some of {sorted(DIMENSIONS)}, got {group_by!r}"
        )
    return ReportSpec("AI use by " + " and ".join(dims), group_by=dims)


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


def _parquet_glob(root: Path, table: str) -> str | None:
    folder = root / table
    if not any(folder.glob("**/*.parquet")):
        return None
    return str(folder / "**" / "*.parquet").replace("'", "''")


@contextmanager
def open_source(source: str | Path, *, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection in which `events`, `usage_hourly` and `candidates` can be queried.

    A file is opened read-only (retrying the writer's lock up to `timeout` s, then
    StoreBusyError) and must be at this code's schema version. A directory is a
    Parquet export root; missing tables read as empty.
    """
    path = Path(source)
    if not path.is_dir():
        con = connect(path, read_only=True, timeout=timeout)
        try:
            check_schema(con, path)
            yield con
        finally:
            con.close()
        return
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        apply_migrations(con, load_migrations())  # empty tables give every column its type
        for table, folder in (("events", "events"), ("usage_hourly", "hourly")):
            glob = _parquet_glob(path, folder)
            if glob is None:
                continue
            con.execute(f"DROP TABLE {table}")
            con.execute(
                f"CREATE VIEW {table} AS SELECT * EXCLUDE (day) FROM read_parquet('{glob}', "
                "hive_partitioning = true, union_by_name = true, "
                "hive_types = {'sensor': VARCHAR, 'day': DATE})"
            )
        # Exports carry no candidates table: derive it from the exported events.
        con.execute("DROP TABLE candidates")
        con.execute(f"CREATE VIEW candidates AS {CANDIDATES_SELECT.format(where='')}")
        yield con
    finally:
        con.close()


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def _period(column: str, start: datetime | None, end: datetime | None) -> tuple[str, dict[str, datetime]]:
    """SQL condition and parameters selecting whole hours from start (down) to end (up)."""
    conditions, params = ["true"], {}
    if start is not None:
        conditions.append(f"{column} >= $start")
        params["start"] = floor_hour(start)
    if end is not None:
        conditions.append(f"{column} < $end")
        params["end"] = ceil_hour(end)
    return " AND ".join(conditions), params


def ceil_hour(moment: datetime) -> datetime:
    """The first hour boundary at or after `moment`, naive UTC."""
    hour = floor_hour(moment)
    return hour if hour == utc_naive(moment) else hour + timedelta(hours=1)


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[Row]:
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def _events_complete(con: duckdb.DuckDBPyConnection, start: datetime | None, end: datetime | None) -> bool:
    """True when the raw events of the period are all still there (none expired by retention)."""
    hourly, params = _period("hour", start, end)
    raw, _ = _period("ts", start, end)
    row = con.execute(
        f"SELECT (SELECT coalesce(sum(events), 0) FROM usage_hourly WHERE {hourly}) = "
        f"(SELECT count(*) FROM events WHERE {raw})",
        params,
    ).fetchone()
    return bool(row and row[0])


def summary_sql(
    group_by: Sequence[str],
    basis: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    policies: Sequence[str] | None = None,
    new_only: bool = False,
    include_unattributed: bool = False,
    limit: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The one summary query: SQL text and its parameters for `basis` "events" or "hourly"."""
    group_by = report_spec(group_by).group_by  # validates the names
    period, params = _period(_PERIOD_COLUMN[basis], start, end)
    columns = [f"{DIMENSIONS[name]} AS {name}" for name in group_by]
    if "service" in group_by:
        columns += [
            f"string_agg(DISTINCT {attr}, ', ' ORDER BY {attr}) AS {attr}"
            for attr in SERVICE_ATTRIBUTES
            if attr not in group_by
        ]
    measures = _MEASURES[basis]
    columns += [f"{expr} AS {name}" for name, expr in measures.items() if not name.startswith("bytes")]
    if "department" not in group_by:
        columns.append("count(DISTINCT department) AS departments")
    if "service" not in group_by:
        columns.append("count(DISTINCT service) FILTER (WHERE service <> '') AS services")
    columns += [f"{expr} AS {name}" for name, expr in measures.items() if name.startswith("bytes")]
    if new_only:
        columns.append("min(hour) AS first_seen")

    where = ["kind <> 'candidate'"]  # candidates have their own report
    if not include_unattributed:
        where.append("service <> ''")
    if policies is not None:
        where.append("list_contains($policies, policy)")
        params["policies"] = list(policies)
    if new_only:
        # First seen over the whole history, which the hourly figures keep longest.
        first = "HAVING min(hour) >= $start" if start is not None else ""
        where.append(f"service IN (SELECT service FROM usage_hourly WHERE service <> '' GROUP BY service {first})")
    keys = ", ".join(DIMENSIONS[name] for name in group_by)
    sql = (
        f"SELECT {', '.join(columns)} FROM {_RELATIONS[basis].format(period=period)} "
        f"WHERE {' AND '.join(where)} GROUP BY {keys} "
        f"ORDER BY bytes_up DESC, flows DESC, {keys}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def usage_summary(
    source: str | Path,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: str | Sequence[str] = ("service",),
    *,
    policies: Sequence[str] | None = None,
    new_only: bool | None = None,
    include_unattributed: bool = False,
    limit: int | None = None,
    basis: str = "auto",
    timeout: float = LOCK_TIMEOUT_SECONDS,
) -> list[Row]:
    """Usage per group in [start, end), ordered by bytes up, then flows.

    `group_by` is a REPORTS name ("service", "department", "jurisdiction", "new",
    "unsanctioned"), or DIMENSIONS names (a sequence or a comma list). Each row:
    the group keys; for services also vendor, jurisdiction, policy; flows,
    dns_lookups, clients (or clients_at_least, see module doc), departments
    and/or services (distinct counts), bytes_up, bytes_down; for new services
    also first_seen. `policies`, `new_only` and `limit` override the report's
    own; candidate events, and events without a service unless
    include_unattributed, are left out.
    """
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    spec = report_spec(group_by)
    with open_source(source, timeout=timeout) as con:
        if basis == "auto":
            basis = "events" if _events_complete(con, start, end) else "hourly"
        sql, params = summary_sql(
            spec.group_by,
            basis,
            start=start,
            end=end,
            policies=spec.policies if policies is None else policies,
            new_only=spec.new_only if new_only is None else new_only,
            include_unattributed=include_unattributed,
            limit=spec.limit if limit is None else limit,
        )
        return _rows(con.execute(sql, params))


def candidates(
    source: str | Path,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    limit: int | None = None,
    timeout: float = LOCK_TIMEOUT_SECONDS,
) -> list[Row]:
    """AI-looking names not in the catalogue, seen in the period, most frequent first."""
    conditions, params = ["true"], {}
    if start is not None:
        conditions.append("last_seen >= $start")
        params["start"] = floor_hour(start)
    if end is not None:
        conditions.append("first_seen < $end")
        params["end"] = ceil_hour(end)
    sql = (
        "SELECT name, count, first_seen, last_seen, example_department FROM candidates "
        f"WHERE {' AND '.join(conditions)} ORDER BY count DESC, name"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with open_source(source, timeout=timeout) as con:
        return _rows(con.execute(sql, params))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
_HEADERS = {
    "dns_lookups": "DNS",
    "clients_at_least": "CLIENTS>=",
    "departments": "DEPTS",
    "bytes_up": "UP",
    "bytes_down": "DOWN",
    "first_seen": "FIRST SEEN",
    "last_seen": "LAST SEEN",
    "example_department": "DEPARTMENT",
}


def human_bytes(count: float | None) -> str:
    """A byte count in SI units the way `ls -h` shows sizes: 512 B, 1.2 MB, 34 GB."""
    if count is None:
        return "-"
    value = float(count)
    if abs(value) < 1000:
        return f"{int(value)} B"
    for unit in _UNITS[1:]:
        value /= 1000
        # One decimal below 10 (1.2 MB), none above (34 GB), as ls -h does.
        text = f"{value:.1f}" if abs(value) < 9.95 else f"{value:.0f}"
        if abs(float(text)) < 1000 or unit == _UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def _cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if column.startswith("bytes"):
        return human_bytes(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table: numbers right-aligned, byte columns in human units."""
    if not rows:
        return "(no usage in this period)\n"
    columns = list(rows[0])
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    header = [_HEADERS.get(c, c.replace("_", " ").upper()) for c in columns]
    widths = [max(len(header[i]), *(len(r[i]) for r in cells)) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (datetime, date)) else value


def render_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a JSON array; times in ISO 8601 (UTC), bytes as plain integers."""
    return json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows], indent=2) + "\n"


def render_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV with a header line; times in ISO 8601 (UTC), bytes as plain integers."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv}


def render(
    rows: Sequence[Mapping[str, Any]], fmt: str = "table", *, group_by: str | Sequence[str] | None = None
) -> str:
    """Rows in `fmt` (a RENDERERS name); a table gets the report's title when group_by is given."""
    try:
        renderer = RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"format must be one of {sorted(RENDERERS)}, got {fmt!r}") from None
    text = renderer(rows)
    if fmt == "table" and group_by is not None:
        title = report_spec(group_by).title
        text = f"{title}\n\n{text}"
    return text
