"""Offline benchmark: `shadowai analyze` against tshark and ndpiReader on one office mix.

    python -m benchmarks.offline [--packets 2000000] [--repeat 3] [--skip-peers] [--keep]

Generates (or reuses, cached under benchmarks/data/) an office mix with a truth manifest,
then runs on the same file, in the same run, each tool `--repeat` times in rotating order:

  shadowai  python -m detector analyze --no-db --format jsonl --raw-clients FILE
  tshark    tshark -r FILE -n -T fields -e ... (TCP and TLS reassembly on)
  ndpiReader ndpiReader -q -i FILE -C flows.csv

and reports per tool the median wall time, packets/s, median peak RSS (the child's
ru_maxrss from wait4), shadowai's time divided by the tool's, and which of the truth's AI
flows it found: the set of (client, server, server port, name) of flows whose name the
catalogue matches. Then shadowai runs on the first half of the same capture, to show that
time grows linearly with packets and memory does not. Results go to
benchmarks/results/<date>-offline.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/offline.py` as well as `python -m benchmarks.offline`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.mix import (
    ROOT,
    Agreement,
    FlowKey,
    MixParams,
    compare,
    ensure_mix,
    flow_key,
    human_bytes,
    load_matcher,
    machine,
    missed_by_evidence,
    prefix_capture,
    result_path,
    truth_ai_flows,
)

TSHARK_FIELDS = (
    "frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport", "udp.srcport",
    "udp.dstport", "tls.handshake.extensions_server_name", "dns.qry.name", "http.host",
)  # fmt: skip
SHOW_DIFFERENCES = 8  # differences printed per tool (all of them are in the JSON file)


@dataclass(slots=True)
class Run:
    """One measured execution of a tool."""

    wall_s: float
    max_rss_kib: int
    returncode: int


@dataclass(slots=True)
class Tool:
    """A tool under test: how to run it on a file, and how to read its AI flows back."""

    name: str
    label: str  # the table's first column
    argv: Callable[[Path, Path], list[str]]  # (capture, scratch dir) -> command
    read_flows: Callable[[Path, Any], tuple[set[FlowKey], str]]  # (scratch dir, matcher) -> flows, note
    runs: list[Run] = field(default_factory=list)


def measure(argv: list[str], stdout: Path, stderr: Path, cwd: Path = ROOT) -> Run:
    """Run a command to completion; wall time and the peak RSS of the child (and any of its
    own children it waited for), both from wait4, so no sampling can miss the peak."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Run(wall, usage.ru_maxrss, proc.returncode)


# -- the tools ----------------------------------------------------------------


def shadowai_tool(extra: list[str]) -> Tool:
    """`shadowai analyze` of this checkout; raw client addresses so flows compare with the truth."""

    def argv(pcap: Path, scratch: Path) -> list[str]:
        return [sys.executable, "-m", "detector", "analyze", "--no-db", "--format", "jsonl", "--raw-clients",
                "--no-progress", "--key-file", str(scratch / "key"), *extra, str(pcap)]  # fmt: skip

    def read(scratch: Path, matcher: Any) -> tuple[set[FlowKey], str]:
        flows: set[FlowKey] = set()
        bad = 0
        first = ""
        with open(scratch / "stdout") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    bad += 1
                    first = first or line.strip()
                    continue
                if e.get("kind") == "flow" and e.get("server_name") and matcher.match(e["server_name"]):
                    flows.add(flow_key(e["client"], e["server_ip"], e["server_port"], e["server_name"]))
        note = f"{bad} output lines are not JSON (first: {first[:80]!r})" if bad else ""
        return flows, note

    return Tool("shadowai", "shadowai analyze (this checkout)", argv, read)


def tshark_tool() -> Tool:
    """tshark with the issue's fields; -n: no name resolution (no lookups leave the machine)."""

    def argv(pcap: Path, scratch: Path) -> list[str]:
        fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
        return ["tshark", "-r", str(pcap), "-n", "-o", "tcp.desegment_tcp_streams:TRUE",
                "-o", "tls.desegment_ssl_records:TRUE", "-T", "fields", "-E", "occurrence=l", *fields]  # fmt: skip

    def read(scratch: Path, matcher: Any) -> tuple[set[FlowKey], str]:
        flows: set[FlowKey] = set()
        with open(scratch / "stdout", errors="replace") as f:
            for line in f:
                col = line.rstrip("\n").split("\t")
                if len(col) < len(TSHARK_FIELDS):
                    continue
                _, src4, dst4, src6, dst6, _, tdport, _, udport, sni, _, host = col[: len(TSHARK_FIELDS)]
                # The client's packet carries the name: its source is the client, its destination the server.
                name = sni or host.rsplit(":", 1)[0]  # CONNECT's Host carries the port
                if name and matcher.match(name):
                    flows.add(flow_key(src4 or src6, dst4 or dst6, tdport or udport, name))
        return flows, ""

    return Tool("tshark", "tshark 4.0 (fields: SNI, DNS, Host)", argv, read)


def ndpi_tool() -> Tool:
    """ndpiReader (nDPI 4.2): per-flow CSV with server_name_sni (SNI, HTTP Host, CONNECT host)."""

    def argv(pcap: Path, scratch: Path) -> list[str]:
        return ["ndpiReader", "-q", "-i", str(pcap), "-C", str(scratch / "flows.csv")]

    def read(scratch: Path, matcher: Any) -> tuple[set[FlowKey], str]:
        flows: set[FlowKey] = set()
        path = scratch / "flows.csv"
        if not path.exists():
            return flows, "no flows.csv written"
        with open(path, newline="", errors="replace") as f:
            for row in csv.DictReader(f):
                name = row.get("server_name_sni") or ""
                # On DNS flows the name is the query's: a lookup, not a flow to that name.
                if not name or "DNS" in (row.get("ndpi_proto") or "") or "53" in (row["src_port"], row["dst_port"]):
                    continue
                if matcher.match(name):
                    client, cport, server, sport = row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"]
                    if int(cport) < int(sport):  # nDPI keeps the initiator as source; guard anyway
                        client, server, sport = server, client, cport
                    flows.add(flow_key(client, server, sport, name))
        return flows, ""

    return Tool("ndpiReader", "ndpiReader (nDPI 4.2, C)", argv, read)


# -- the run ------------------------------------------------------------------


def run_tools(tools: list[Tool], pcap: Path, scratch: Path, repeat: int, log: Callable[[str], None]) -> None:
    """Each tool `repeat` times, rotating the order so no tool always runs first (cold cache)
    or last; the first run's output of each is kept in scratch/<tool>/ for the AI check."""
    for i in range(repeat):
        for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
            d = scratch / tool.name
            d.mkdir(exist_ok=True)
            keep = not tool.runs
            out = d / ("stdout" if keep else "stdout.again")
            run = measure(tool.argv(pcap, d), out, d / "stderr")
            if not keep:
                out.unlink(missing_ok=True)
            tool.runs.append(run)
            log(
                f"  run {i + 1}/{repeat} {tool.name:<10} {run.wall_s:7.1f} s  {human_bytes(run.max_rss_kib * 1024):>7}"
                f"{'' if run.returncode == 0 else f'  exit {run.returncode}'}  (load {os.getloadavg()[0]:.2f})"
            )


def median_run(runs: list[Run]) -> tuple[float, float]:
    """Median wall time (s) and median peak RSS (bytes)."""
    return statistics.median(r.wall_s for r in runs), statistics.median(r.max_rss_kib for r in runs) * 1024


def row_for(tool: Tool, packets: int, ref_wall: float, agreement: Agreement | None) -> dict[str, Any]:
    """One line of the table and of the JSON file."""
    wall, rss = median_run(tool.runs)
    return {
        "tool": tool.name, "label": tool.label, "wall_s": round(wall, 2),
        "wall_runs_s": [round(r.wall_s, 2) for r in tool.runs], "peak_rss_bytes": int(rss),
        "packets_per_s": round(packets / wall), "shadowai_time_ratio": round(ref_wall / wall, 3),
        "exit_codes": sorted({r.returncode for r in tool.runs}),
        "ai_flows_found": agreement.found if agreement else None,
        "ai_flows_expected": agreement.expected if agreement else None,
        "ai_flows_extra": len(agreement.extra) if agreement else None,
    }  # fmt: skip


def print_table(rows: list[dict[str, Any]], repeat: int, expected: int) -> None:
    """The issue's table, plus packets/s and the ratio."""
    head = ("tool", f"wall time (median of {repeat})", "packets/s", "peak memory", "shadowai ÷ tool",
            f"AI flows found (of {expected:,})")  # fmt: skip
    lines = [head]
    for r in rows:
        found = "—" if r["ai_flows_found"] is None else f"{r['ai_flows_found']:,}"
        if r["ai_flows_extra"]:
            found += f" (+{r['ai_flows_extra']} not in truth)"
        lines.append((r["label"], f"{r['wall_s']:.1f} s", f"{r['packets_per_s']:,}", human_bytes(r["peak_rss_bytes"]),
                      f"{r['shadowai_time_ratio']:.2f}", found))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for line in lines[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")


def report_differences(name: str, a: Agreement, truth: dict[FlowKey, dict[str, Any]], note: str) -> dict[str, Any]:
    """Print what a tool missed or added; return it for the JSON file."""
    by = missed_by_evidence(a.missed, truth)
    print(
        f"{name}: found {a.found:,}/{a.expected:,} of the truth's AI flows"
        + (f"; missed {len(a.missed)} ({', '.join(f'{k} {v}' for k, v in by.items())})" if a.missed else "")
        + (f"; {len(a.extra)} AI flows not in the truth" if a.extra else "")
        + (f"; {note}" if note else "")
    )
    for k in a.missed[:SHOW_DIFFERENCES]:
        print(f"    missed {k[0]} -> {k[1]}:{k[2]} {k[3]} ({truth[k]['evidence']}, {truth[k]['transport']})")
    for k in a.extra[:SHOW_DIFFERENCES]:
        print(f"    extra  {k[0]} -> {k[1]}:{k[2]} {k[3]}")
    return {
        "missed": [list(k) for k in a.missed],
        "missed_by_evidence": by,
        "extra": [list(k) for k in a.extra],
        "note": note,
    }


def growth(
    tool: Tool, full: Path, packets: int, scratch: Path, repeat: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """shadowai on the first half of the capture: time should halve, peak memory stay put."""
    half = scratch / "half.pcap"
    n = prefix_capture(full, half, packets // 2)
    runs: list[Run] = []
    log(f"growth: shadowai on the first {n:,} packets")
    (scratch / "half").mkdir(exist_ok=True)
    for i in range(repeat):
        run = measure(tool.argv(half, scratch / "half"), scratch / "half" / "stdout", scratch / "half" / "stderr")
        runs.append(run)
        log(f"  run {i + 1}/{repeat} half       {run.wall_s:7.1f} s  {human_bytes(run.max_rss_kib * 1024):>7}")
    half.unlink()
    hw, hr = median_run(runs)
    fw, fr = median_run(tool.runs)
    return {
        "half": {"packets": n, "wall_s": round(hw, 2), "peak_rss_bytes": int(hr)},
        "full": {"packets": packets, "wall_s": round(fw, 2), "peak_rss_bytes": int(fr)},
        "time_ratio_full_to_half": round(fw / hw, 3),
        "rss_ratio_full_to_half": round(fr / hr, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table, write the JSON file."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.offline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--packets", type=int, default=2_000_000, help="size of the mix (default 2,000,000)")
    p.add_argument("--clients", type=int, default=6000, help="workstations in the mix (default 6000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is reported (default 3)")
    p.add_argument("--skip-peers", action="store_true", help="run only shadowai (no tshark, no ndpiReader)")
    p.add_argument("--skip-growth", action="store_true", help="skip the half-size run")
    p.add_argument("--keep", action="store_true", help="keep the tools' outputs (printed at the end)")
    p.add_argument("--shadowai-args", default="", help="extra arguments for shadowai analyze, e.g. '--workers 2'")
    p.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "data", help="where mixes are cached")
    p.add_argument("--json", type=Path, help="result file (default benchmarks/results/<date>-offline.json)")
    a = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)

    load_before = machine()
    mix = ensure_mix(MixParams(packets=a.packets, clients=a.clients, seed=a.seed), a.data_dir, log)
    matcher = load_matcher()
    truth = truth_ai_flows(mix.truth, matcher)
    packets = mix.info["packets"]
    tools = [shadowai_tool(shlex.split(a.shadowai_args))]
    skipped: dict[str, str] = {}
    if not a.skip_peers:
        for make, exe in ((tshark_tool, "tshark"), (ndpi_tool, "ndpiReader")):
            if shutil.which(exe):
                tools.append(make())
            else:
                skipped[exe] = (
                    f"{exe} not found (Debian: apt-get install {'tshark' if exe == 'tshark' else 'libndpi-bin'})"
                )
                log(f"skipping {exe}: {skipped[exe]}")
    scratch = Path(tempfile.mkdtemp(prefix="shadowai-bench-", dir=a.data_dir))
    try:
        log(f"running {len(tools)} tools x {a.repeat} on {mix.pcap.name} (load {load_before['load_avg']})")
        run_tools(tools, mix.pcap, scratch, a.repeat, log)
        grown = None if a.skip_growth else growth(tools[0], mix.pcap, packets, scratch, a.repeat, log)
        load_after = machine()
        ref_wall = median_run(tools[0].runs)[0]
        rows, diffs = [], {}
        print()
        _print_mix(mix.info, len(truth), load_before, load_after)
        for tool in tools:
            flows, note = tool.read_flows(scratch / tool.name, matcher)
            agreement = compare(flows, truth)
            rows.append(row_for(tool, packets, ref_wall, agreement))
            diffs[tool.name] = (agreement, note)
        print()
        print_table(rows, a.repeat, len(truth))
        print()
        differences = {name: report_differences(name, ag, truth, note) for name, (ag, note) in diffs.items()}
        if grown:
            h, f = grown["half"], grown["full"]
            print(
                f"\ngrowth: {h['packets']:,} packets {h['wall_s']:.1f} s {human_bytes(h['peak_rss_bytes'])} -> "
                f"{f['packets']:,} packets {f['wall_s']:.1f} s {human_bytes(f['peak_rss_bytes'])}: "
                f"time x{grown['time_ratio_full_to_half']:.2f}, peak memory x{grown['rss_ratio_full_to_half']:.2f}"
            )
        doc = {
            "kind": "offline", "started_load": load_before, "finished_load": load_after, "mix": mix.info,
            "mix_file": str(mix.pcap), "repeat": a.repeat, "shadowai_args": a.shadowai_args,
            "commands": {t.name: " ".join(t.argv(Path("FILE"), Path("SCRATCH"))) for t in tools},
            "results": rows, "differences": differences, "growth": grown, "skipped": skipped,
            "truth_ai_flows": len(truth),
        }  # fmt: skip
        out = a.json or result_path("offline")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nresults: {out}")
        if a.keep:
            print(f"outputs kept in {scratch}")
        return 0 if all(r.returncode == 0 for t in tools for r in t.runs) else 1
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _print_mix(info: dict[str, Any], ai_keys: int, before: dict[str, Any], after: dict[str, Any]) -> None:
    print(f"mix: {info['packets']:,} packets / {human_bytes(info['bytes'])} "
          f"({info['seconds_of_traffic']:.0f} s of traffic): "
          f"{info['tls_flows']:,} TLS flows, {info['quic_flows']:,} QUIC flows, {info['http_flows']} HTTP flows, "
          f"{info['dns_packets']:,} DNS packets, {info['split_client_hellos']:,} of {info['tcp_client_hellos']:,} "
          f"ClientHellos split over segments, {info['ai_flows']:,} AI flows "
          f"({ai_keys:,} distinct client/server/port/name)")  # fmt: skip
    print(f"     {info['command']}")
    print(
        f"checkout {before['checkout']}; machine: {before['cpus']} cores, load average {before['load_avg']} before, "
        f"{after['load_avg']} after"
    )


if __name__ == "__main__":
    sys.exit(main())
