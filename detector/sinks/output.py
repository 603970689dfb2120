"""What `shadowai analyze` prints: one record per event (jsonl, csv) or a summary table."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import IO

from detector.model import EVENT_FIELDS, Stats, UsageEvent


class JsonlSink:
    """One JSON object per event and line."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def handle(self, ev: UsageEvent) -> None:
        """Write one event."""
        self.out.write(json.dumps({f: getattr(ev, f) for f in EVENT_FIELDS}, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Flush the output."""
        self.out.flush()


class CsvSink:
    """CSV with a header row; columns in the order of UsageEvent's fields."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(EVENT_FIELDS)

    def handle(self, ev: UsageEvent) -> None:
        """Write one event."""
        self.writer.writerow([getattr(ev, f) for f in EVENT_FIELDS])

    def close(self) -> None:
        """Flush the output."""
        self.out.flush()


@dataclass(slots=True)
class _Row:
    policy: str = ""
    vendor: str = ""
    jurisdiction: str = ""
    flows: int = 0
    lookups: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    clients: set[str] = field(default_factory=set)
    departments: set[str] = field(default_factory=set)


class SummarySink:
    """Per-service totals for the table a person reads."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.other: dict[str, int] = {}  # encrypted-DNS and candidate events by kind

    def handle(self, ev: UsageEvent) -> None:
        """Add one event to its service's row."""
        if ev.kind != "flow" and ev.kind != "dns":
            self.other[ev.kind] = self.other.get(ev.kind, 0) + 1
            return
        if not ev.service:
            return
        row = self.rows.get(ev.service)
        if row is None:
            row = self.rows[ev.service] = _Row(ev.policy, ev.vendor, ev.jurisdiction)
        if ev.kind == "dns":
            row.lookups += 1
        else:
            row.flows += 1
        row.bytes_up += ev.bytes_up
        row.bytes_down += ev.bytes_down
        row.clients.add(ev.client)
        row.departments.add(ev.department)

    def render(self) -> str:
        """The summary as a fixed-width table, largest upload first."""
        header = ("service", "vendor", "juris", "policy", "flows", "lookups", "clients", "depts", "up", "down")
        lines = [header]
        order = sorted(self.rows.items(), key=lambda kv: (-kv[1].bytes_up, -kv[1].flows, kv[0]))
        for name, r in order:
            lines.append(
                (name, r.vendor, r.jurisdiction, r.policy, str(r.flows), str(r.lookups), str(len(r.clients)),
                 str(len(r.departments)), human_bytes(r.bytes_up), human_bytes(r.bytes_down))
            )  # fmt: skip
        extra = "".join(f"{n:,} {kind} event(s)\n" for kind, n in sorted(self.other.items()))
        if len(lines) == 1:
            return "No AI-service use found.\n" + extra
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        numeric = set(range(4, len(header)))
        out = []
        for row in lines:
            cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            out.append("  ".join(cells).rstrip())
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out) + "\n" + extra

    def close(self) -> None:
        """Nothing to flush: the caller renders."""


def human_bytes(n: int) -> str:
    """Bytes in the units `ls -h` uses (1000-based, one decimal)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def render_coverage(stats: Stats) -> str:
    """What the sensor could and could not see: the admin's honesty figures."""
    blind = sum(stats.flows_blind.values())
    total = stats.flows_named + stats.flows_dns_only + blind
    lines = [f"Packets {stats.packets:,}, flows {stats.flows_total:,}, events {stats.events:,}."]
    if total:
        pct = lambda n: f"{100.0 * n / total:.1f}%"  # noqa: E731
        lines.append(
            f"TLS/QUIC flows {total:,}: named {stats.flows_named:,} ({pct(stats.flows_named)}), "
            f"by DNS only {stats.flows_dns_only:,} ({pct(stats.flows_dns_only)}), blind {blind:,} ({pct(blind)})"
        )
        if blind:
            why = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.flows_blind.items(), key=lambda kv: -kv[1]))
            lines.append(f"  blind because: {why}")
    if stats.flows_evicted or stats.reassembly_overflows:
        lines.append(f"Flow evictions {stats.flows_evicted:,}, handshake buffers over bound {stats.reassembly_overflows:,}.")
    if stats.anomalies:
        worst = sorted(stats.anomalies.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("Anomalies: " + ", ".join(f"{k} {v:,}" for k, v in worst))
    return "\n".join(lines) + "\n"
