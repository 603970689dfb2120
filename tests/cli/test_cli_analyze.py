"""`shadowai analyze` as an admin runs it, on the bundled sample capture and its truth manifest
(issue 2): the three output formats, agreement with the truth, errors that are one line and
never a traceback, the database written once per capture, and client privacy."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import ipaddress
import json
import re
import stat
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from _cli import SAMPLE, TRUTH, assert_one_line_error, shadowai
from click.testing import CliRunner

from detector.classify.catalogue import load_catalogue
from detector.cli import cli

# The fields DESIGN.md ("Contracts") promises in every jsonl record.
DESIGN_FIELDS = (
    "ts", "client", "department", "service", "vendor", "category", "jurisdiction", "policy", "server_name",
    "server_ip", "server_port", "transport", "evidence", "bytes_up", "bytes_down", "packets",
)  # fmt: skip
EVIDENCE = {"dns", "tls-sni", "quic-sni", "http-host", "http-connect", "dns-cache"}
PSEUDONYM = re.compile(r"c-[0-9a-f]{16}")
TRUTH_DATA = json.loads(TRUTH.read_text())
RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory (pseudonym key) for the module's shared runs."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def jsonl(state: Path) -> list[dict]:
    r = shadowai("analyze", SAMPLE, "--format", "jsonl", "--no-db", state=state)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def raw_jsonl(state: Path) -> list[dict]:
    r = shadowai("analyze", SAMPLE, "--format", "jsonl", "--no-db", "--raw-clients", "--all", state=state)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _table_rows(text: str) -> dict[str, dict[str, str]]:
    """The summary table as {service: {column: cell}}; columns found from the dashed rule."""
    lines = text.splitlines()
    rule_at = next(i for i, line in enumerate(lines) if line.startswith("---"))
    spans = [m.span() for m in re.finditer(r"-+", lines[rule_at])]
    header = [lines[rule_at - 1][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[rule_at + 1 :]:
        if not line.strip() or not line[0].isalnum() or len(line) < spans[-1][0]:
            break
        cells = dict(zip(header, (line[a:b].strip() for a, b in spans)))
        rows[cells[header[0]]] = cells
    return rows


@functools.cache
def _ai_services() -> frozenset[str]:
    return frozenset(load_catalogue(RULES).services)


# -- formats -----------------------------------------------------------------------------------


def test_table_lists_every_ai_service_of_the_truth_with_its_counts_and_the_coverage(state: Path) -> None:
    r = shadowai("analyze", SAMPLE, "--no-db", state=state)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = _table_rows(r.stdout)
    ai = _ai_services()
    records = [rec for rec in TRUTH_DATA["records"] if rec["service"] in ai]
    assert set(rows) == {rec["service"] for rec in records}
    for service, cells in rows.items():
        mine = [rec for rec in records if rec["service"] == service]
        assert int(cells["flows"]) == sum(rec["kind"] == "flow" for rec in mine), service
        assert int(cells["lookups"]) == sum(rec["kind"] == "dns" for rec in mine), service
        assert int(cells["clients"]) == len({rec["client"] for rec in mine}), service
        assert int(cells["depts"]) == len({rec["department"] for rec in mine}), service
        assert cells["policy"] in ("sanctioned", "tolerated", "unsanctioned", "blocked")
    assert f"Packets {TRUTH_DATA['packets']:,}, flows {TRUTH_DATA['flows']}" in r.stdout
    assert re.search(r"TLS/QUIC flows \d+: named \d+ \([\d.]+%\), by DNS only \d+ \([\d.]+%\), blind \d+", r.stdout)


def test_jsonl_records_carry_every_field_the_design_promises(jsonl: list[dict]) -> None:
    assert jsonl
    for rec in jsonl:
        assert set(DESIGN_FIELDS) <= set(rec), set(DESIGN_FIELDS) - set(rec)
        assert rec["ts"].endswith("Z") and rec["ts"][:19] >= "2026-11-02T09:00:00"
        assert PSEUDONYM.fullmatch(rec["client"]), rec["client"]
        assert rec["evidence"] in EVIDENCE
        assert rec["transport"] in ("tcp", "udp", "quic")
        for field in ("server_port", "bytes_up", "bytes_down", "packets"):
            assert isinstance(rec[field], int) and rec[field] >= 0
        ipaddress.ip_address(rec["server_ip"])
        if rec["kind"] != "encrypted-dns":
            assert rec["service"] and rec["vendor"] and rec["category"] and rec["jurisdiction"] and rec["policy"]


def test_csv_has_a_header_with_every_design_field_and_the_same_records_as_jsonl(state: Path, jsonl: list[dict]) -> None:
    r = shadowai("analyze", SAMPLE, "--format", "csv", "--no-db", state=state)
    assert r.returncode == 0, r.stderr
    reader = csv.DictReader(io.StringIO(r.stdout))
    assert set(DESIGN_FIELDS) <= set(reader.fieldnames or ())
    rows = list(reader)
    as_text = [{k: str(v) for k, v in rec.items() if k in reader.fieldnames} for rec in jsonl]
    assert sorted(map(sorted, (row.items() for row in rows))) == sorted(map(sorted, (rec.items() for rec in as_text)))


# -- agreement with the truth manifest ---------------------------------------------------------


def _key(kind: str, rec: dict, name: str) -> tuple:
    # A lookup is reported when its query is seen, with the query's bytes: bytes down and
    # packets are compared for flows only (the truth counts the answer into a lookup).
    flow = kind != "dns"
    return (kind, rec["client"], rec["server_ip"], rec["server_port"], rec["transport"], name, rec["service"],
            rec["evidence"], rec["bytes_up"], rec["bytes_down"] if flow else None, rec["packets"] if flow else None)  # fmt: skip


def test_every_ai_flow_and_lookup_of_the_truth_is_found_with_its_service_evidence_and_bytes(raw_jsonl: list[dict]) -> None:
    ai = _ai_services()
    attributed = [e for e in raw_jsonl if e["service"]]
    want = Counter(_key(r["kind"], r, r["name"]) for r in TRUTH_DATA["records"] if r["service"] in ai or r["kind"] == "encrypted-dns")
    got = Counter(_key(e["kind"], e, e["server_name"]) for e in attributed)
    assert want - got == Counter(), "in the truth, not found"
    assert got - want == Counter(), "found, not in the truth"


def test_all_adds_every_other_named_flow_and_lookup_of_the_truth_with_an_empty_service(raw_jsonl: list[dict]) -> None:
    ai = _ai_services()
    want = Counter()
    for r in TRUTH_DATA["records"]:
        keep = r["service"] in ai or r["kind"] == "encrypted-dns"
        want[_key(r["kind"], {**r, "service": r["service"] if keep else ""}, r["name"])] += 1
    got = Counter(_key(e["kind"], e, e["server_name"]) for e in raw_jsonl)
    assert want == got


# -- errors ------------------------------------------------------------------------------------


def test_a_file_that_is_no_capture_is_one_error_line_and_the_other_files_are_still_read(tmp_path: Path, jsonl: list[dict]) -> None:
    junk = tmp_path / "notes.pcap"
    junk.write_text("this is no capture\n")
    r = shadowai("analyze", junk, SAMPLE, "--format", "jsonl", "--no-db", state=tmp_path)
    assert_one_line_error(r, 1, str(junk), "not a pcap or pcapng file")
    assert len(r.stdout.splitlines()) == len(jsonl)


@pytest.mark.parametrize("engine", ["auto", "full"])
def test_a_truncated_capture_is_read_up_to_its_end_with_a_warning_naming_it(tmp_path: Path, engine: str) -> None:
    cut = tmp_path / "cut.pcap"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[: len(data) // 3 + 7])  # mid-record
    r = shadowai("analyze", cut, "--format", "jsonl", "--no-db", "--engine", engine, state=tmp_path)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.splitlines()
    assert len(warnings) == 1 and str(cut) in warnings[0] and "truncated" in warnings[0], r.stderr
    assert len(r.stdout.splitlines()) > 10  # the events before the cut


def test_a_gzip_compressed_capture_gives_the_same_events(tmp_path: Path, jsonl: list[dict]) -> None:
    packed = tmp_path / "office.pcap.gz"
    packed.write_bytes(gzip.compress(SAMPLE.read_bytes(), compresslevel=1))
    r = shadowai("analyze", packed, "--format", "jsonl", "--no-db", state=tmp_path)
    assert r.returncode == 0, r.stderr
    # Same key file? No: another state directory, so compare all but the pseudonym.
    strip = lambda rec: {k: v for k, v in rec.items() if k != "client"}
    got = sorted(json.dumps(strip(json.loads(line)), sort_keys=True) for line in r.stdout.splitlines())
    assert got == sorted(json.dumps(strip(rec), sort_keys=True) for rec in jsonl)


def test_a_missing_file_is_one_error_line_and_the_other_files_are_still_read(tmp_path: Path, jsonl: list[dict]) -> None:
    gone = tmp_path / "gone.pcap"
    r = shadowai("analyze", gone, "--no-db", state=tmp_path)
    assert_one_line_error(r, 1, str(gone), "no such file")
    r = shadowai("analyze", gone, SAMPLE, "--format", "jsonl", "--no-db", state=tmp_path)
    assert_one_line_error(r, 1, str(gone), "no such file")
    assert len(r.stdout.splitlines()) == len(jsonl)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("flows:\n  max_flow: 10\n", "flows.max_flow", "unknown key"),
        ("store:\n  path: [a, b]\n", "store.path", "must be a string"),
        ("flows:\n  idle_timeout: soon\n", "flows.idle_timeout", "must be a number"),
        ("privacy:\n  raw_clients: 'yes'\n", "privacy.raw_clients", "must be true or false"),
    ],
    ids=["unknown-key", "list-for-string", "text-for-number", "text-for-bool"],
)
def test_a_bad_config_file_is_one_error_line_naming_the_key_and_exit_2(tmp_path: Path, text: str, key: str, problem: str) -> None:
    cfg = tmp_path / "shadowai.yaml"
    cfg.write_text(text)
    r = shadowai("analyze", SAMPLE, "--no-db", "--config", cfg, state=tmp_path)
    assert_one_line_error(r, 2, str(cfg), key, problem)
    assert r.stdout == ""


def test_broken_rules_stop_analyze_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    r = shadowai("analyze", SAMPLE, "--no-db", "--rules", tmp_path / "no-rules", state=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "shadowai: error: the rules have problems; run `shadowai rules check`"


# -- database ----------------------------------------------------------------------------------


def _counts(db: Path) -> tuple[int, int, int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        events, distinct = con.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        flows, up = con.execute("SELECT sum(flows), sum(bytes_up) FROM usage_hourly").fetchone()
        return events, distinct, int(flows), int(up)
    finally:
        con.close()


def test_analysing_the_same_capture_twice_does_not_count_it_twice(tmp_path: Path, jsonl: list[dict]) -> None:
    db = tmp_path / "usage.duckdb"
    assert shadowai("analyze", SAMPLE, "--db", db, "--format", "jsonl", state=tmp_path).returncode == 0
    once = _counts(db)
    assert once[0] == once[1] == len(jsonl)
    assert shadowai("analyze", SAMPLE, "--db", db, "--format", "jsonl", state=tmp_path).returncode == 0
    assert _counts(db) == once
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2  # both runs recorded
    finally:
        con.close()


# -- privacy -----------------------------------------------------------------------------------


def test_clients_are_pseudonyms_by_default_and_addresses_only_with_raw_clients(tmp_path: Path, jsonl: list[dict], raw_jsonl: list[dict]) -> None:
    assert all(PSEUDONYM.fullmatch(rec["client"]) for rec in jsonl)
    raw = {rec["client"] for rec in raw_jsonl}
    for client in raw:
        ipaddress.ip_address(client)
    assert {rec["client"] for rec in raw_jsonl if rec["service"]} == {
        r["client"] for r in TRUTH_DATA["records"] if r["service"] in _ai_services() or r["kind"] == "encrypted-dns"
    }
    # The database holds what the screen shows: pseudonyms unless asked otherwise.
    db = tmp_path / "p.duckdb"
    assert shadowai("analyze", SAMPLE, "--db", db, "--format", "csv", state=tmp_path).returncode == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = {row[0] for row in con.execute("SELECT DISTINCT client FROM events").fetchall()}
    finally:
        con.close()
    assert stored and all(PSEUDONYM.fullmatch(c) for c in stored)


def test_key_file_is_created_with_mode_0600_and_keeps_pseudonyms_stable(tmp_path: Path, jsonl: list[dict]) -> None:
    key = tmp_path / "keys" / "pseudonym.key"
    key.parent.mkdir()
    first = shadowai("analyze", SAMPLE, "--format", "jsonl", "--no-db", "--key-file", key, state=tmp_path)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = shadowai("analyze", SAMPLE, "--format", "jsonl", "--no-db", "--key-file", key, state=tmp_path)
    assert again.stdout == first.stdout
    # Another key (the module's runs use their own state directory's): other pseudonyms.
    mine = {json.loads(line)["client"] for line in first.stdout.splitlines()}
    assert mine.isdisjoint(rec["client"] for rec in jsonl)


# -- help --------------------------------------------------------------------------------------


def _command_paths(group, prefix=()):  # type: ignore[no-untyped-def]
    yield prefix
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _command_paths(cmd, (*prefix, name))


@pytest.mark.parametrize("path", list(_command_paths(cli)), ids=lambda p: " ".join(p) or "shadowai")
def test_help_of_every_command_works(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and result.exception is None
