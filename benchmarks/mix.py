"""The benchmark mix: an office capture from the project's generator, cached by parameters,
its truth manifest's AI flows, and the figures that say what the mix holds.

Both harnesses (offline.py, live.py) use it. A mix is generated once per parameter set and
generator version (a hash of detector/synth/*.py is part of the file name) under
benchmarks/data/, which git ignores.

Calibration (seed 1, checked 2026-11): with the defaults below, 2.0 M packets hold about
30 k flows (28 k TLS over TCP, 2.5 k QUIC), 26 k DNS lookups (52 k DNS packets), 3 % AI
flows and ~1.5 GB of frames, close to the mix of issue 6. Two knobs matter: the cap on one
transfer (`max_flow_bytes`, which the `office` command line does not offer, hence the call
to `generate_office`) sets packets per flow; many clients with a low visit rate keep the
clients' DNS caches cold, so most visits start with a lookup.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "benchmarks" / "data"
RESULTS_DIR = ROOT / "benchmarks" / "results"
RULES_DIR = ROOT / "rules"

REFERENCE_PACKETS = 2_000_000  # the mix size; other sizes scale the duration
REFERENCE_DURATION_S = 1800.0  # half an hour of office traffic at the reference size
REFERENCE_CLIENTS = 6000  # below 8000: Sociaal Domein's /21 would wrap and repeat addresses
REFERENCE_RATE = 0.17  # visits per client per minute at REFERENCE_CLIENTS (cold DNS caches)
MAX_FLOW_BYTES = 25_000  # cap on one transfer: ~65 packets per flow, like the mix
AI_SHARE = 0.03  # share of visits to AI services ("a few percent")
LARGE_UPLOAD_BYTES = 25_000_000  # the generator's one large paste into ChatGPT, at full size
MIN_DURATION_S = 5.0  # tiny mixes (smoke tests) still span a few seconds

FlowKey = tuple[str, str, int, str]  # (client, server address, server port, name), normalised

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_HEADER = 24
_RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len (generator: little endian)


@dataclass(frozen=True, slots=True)
class MixParams:
    """What a mix is made of; everything else is derived so that packets scale linearly."""

    packets: int = REFERENCE_PACKETS  # target (the generator lands within a few percent)
    clients: int = REFERENCE_CLIENTS
    seed: int = 1
    snap_bulk: int | None = None  # keep only this many payload bytes of bulk packets

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of detector.synth.office.generate_office for this mix."""
        scale = self.packets / REFERENCE_PACKETS
        return {
            "clients": self.clients,
            "duration_s": max(MIN_DURATION_S, round(REFERENCE_DURATION_S * scale, 3)),
            "seed": self.seed,
            # Visits per second stay those of the reference, whatever the client count.
            "flows_per_client_per_minute": round(REFERENCE_RATE * REFERENCE_CLIENTS / self.clients, 6),
            "ai_share": AI_SHARE,
            "max_flow_bytes": MAX_FLOW_BYTES,
            "large_upload_bytes": int(LARGE_UPLOAD_BYTES * min(1.0, scale)),
            "snap_bulk": self.snap_bulk,
        }

    def command(self, out: str = "OUT.pcap") -> str:
        """The nearest `python -m detector.synth office` command (it has no --max-flow-bytes)."""
        k = self.generator_kwargs()
        snap = f" --snap-bulk {k['snap_bulk']}" if k["snap_bulk"] is not None else ""
        return (
            f"python -m detector.synth office {out} --clients {k['clients']} --duration {k['duration_s']:g} "
            f"--rate {k['flows_per_client_per_minute']:g} --ai-share {k['ai_share']:g} --seed {k['seed']} "
            f"--large-upload {k['large_upload_bytes']}{snap} --truth {Path(out).stem}.truth.jsonl "
            f"(+ generate_office(max_flow_bytes={k['max_flow_bytes']}))"
        )

    def stem(self) -> str:
        """File name stem: readable parameters plus a hash of the arguments and the generator code."""
        digest = hashlib.sha256(json.dumps(self.generator_kwargs(), sort_keys=True).encode())
        for src in sorted((ROOT / "detector" / "synth").glob("*.py")):
            digest.update(src.read_bytes())
        return f"office-p{self.packets}-c{self.clients}-s{self.seed}-{digest.hexdigest()[:10]}"


@dataclass(frozen=True, slots=True)
class Mix:
    """A generated capture, its truth manifest (.jsonl) and its figures (info)."""

    pcap: Path
    truth: Path
    info: dict[str, Any]


def ensure_mix(params: MixParams, data_dir: Path = DATA_DIR, log: Callable[[str], None] = print) -> Mix:
    """The mix for `params`: reused when cached in data_dir, else generated and scanned."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stem = params.stem()
    pcap, truth, info_path = (data_dir / f"{stem}{ext}" for ext in (".pcap", ".truth.jsonl", ".info.json"))
    if pcap.exists() and truth.exists() and info_path.exists():
        log(f"mix: reusing {pcap.relative_to(ROOT) if pcap.is_relative_to(ROOT) else pcap}")
        return Mix(pcap, truth, json.loads(info_path.read_text()))
    from detector.synth.office import generate_office

    log(f"mix: generating {params.packets:,} packets ({params.command()}) ...")
    tmp_pcap, tmp_truth = data_dir / f"{stem}.part.pcap", data_dir / f"{stem}.part.truth.jsonl"
    t0 = time.perf_counter()
    summary = generate_office(
        tmp_pcap,
        truth=tmp_truth,
        **params.generator_kwargs(),
        progress=lambda n: log(f"mix:   {n:,} packets") if n % (1 << 19) == 0 else None,
    )
    generated = time.perf_counter() - t0
    info = {
        "params": asdict(params),
        "generator": params.generator_kwargs(),
        "command": params.command(pcap.name),
        "generated_in_s": round(generated, 1),
        "packets": summary.packets,
        "bytes": summary.bytes,
        "wire_bytes": summary.wire_bytes,
        "seconds_of_traffic": round(summary.last_ts - summary.first_ts, 1),
        **scan_capture(tmp_pcap),
        **truth_figures(tmp_truth),
    }
    tmp_truth.rename(truth)
    tmp_pcap.rename(pcap)
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    log(f"mix: {summary.packets:,} packets written in {generated:.0f} s to {pcap}")
    return Mix(pcap, truth, info)


def scan_capture(path: Path) -> dict[str, int]:
    """One pass over a capture for the figures the issue quotes: DNS packets, ClientHellos
    over TCP and how many are split over segments, the largest frame (for the live MTU)."""
    from detector.capture.pcapfile import iter_frames

    c: Counter[str] = Counter()
    unpack = struct.unpack_from
    for _, _, frame in iter_frames(path):
        c["max_frame"] = max(c["max_frame"], len(frame))
        off, ethertype = 14, unpack("!H", frame, 12)[0]
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:  # VLAN tags
            ethertype, off = unpack("!H", frame, off + 2)[0], off + 4
        if ethertype == 0x0800 and len(frame) >= off + 20:
            proto, l4 = frame[off + 9], off + (frame[off] & 0x0F) * 4
        elif ethertype == 0x86DD and len(frame) >= off + 40:
            proto, l4 = frame[off + 6], off + 40
        else:
            continue
        if len(frame) < l4 + 14:
            continue
        sport, dport = unpack("!HH", frame, l4)
        if proto == 17 and 53 in (sport, dport):
            c["dns_packets"] += 1
        elif proto == 6:
            p = l4 + (frame[l4 + 12] >> 4) * 4
            if len(frame) >= p + 6 and frame[p] == 0x16 and frame[p + 5] == 1:  # handshake record, ClientHello
                c["tcp_client_hellos"] += 1
                if p + 5 + unpack("!H", frame, p + 3)[0] > len(frame):
                    c["split_client_hellos"] += 1
    return {k: c[k] for k in ("dns_packets", "tcp_client_hellos", "split_client_hellos", "max_frame")}


def truth_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a .jsonl truth manifest (its header line skipped)."""
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "header":
                yield rec


def truth_figures(path: Path) -> dict[str, int]:
    """Flow and lookup counts of a truth manifest, as the issue counts them."""
    c: Counter[str] = Counter()
    for r in truth_records(path):
        if r["kind"] == "dns":
            c["dns_lookups"] += 1
        elif r["transport"] == "quic":
            c["quic_flows"] += 1
        elif r["evidence"] == "http-host":
            c["http_flows"] += 1
        else:
            c["tls_flows"] += 1  # TLS over TCP, direct or inside a proxy tunnel
        if r["kind"] == "flow" and r.get("service"):
            c["ai_flows"] += 1
    return {k: c[k] for k in ("tls_flows", "quic_flows", "http_flows", "dns_lookups", "ai_flows")}


def load_matcher(rules_dir: Path = RULES_DIR) -> Any:
    """The catalogue's hostname matcher (names -> AI services)."""
    from detector.classify.catalogue import load_catalogue

    return load_catalogue(rules_dir).matcher


def flow_key(client: str, server: str, port: int | str, name: str) -> FlowKey:
    """A flow as every tool can name it; addresses in canonical form, names lower case."""
    return (_canonical(client), _canonical(server), int(port), name.strip().lower().rstrip("."))


def _canonical(addr: str) -> str:
    try:
        return ipaddress.ip_address(addr.strip()).compressed
    except ValueError:
        return addr.strip()


def truth_ai_flows(path: Path, matcher: Any) -> dict[FlowKey, dict[str, Any]]:
    """The truth's AI flows, keyed like every tool's (a key seen twice keeps its first record)."""
    out: dict[FlowKey, dict[str, Any]] = {}
    for r in truth_records(path):
        if r["kind"] == "flow" and r["name"] and matcher.match(r["name"]) is not None:
            out.setdefault(flow_key(r["client"], r["server_ip"], r["server_port"], r["name"]), r)
    return out


@dataclass(slots=True)
class Agreement:
    """How one tool's AI flows compare with the truth's."""

    found: int  # truth keys the tool reported
    expected: int
    missed: list[FlowKey]
    extra: list[FlowKey]  # AI flows the tool reported that the truth does not hold


def compare(found: set[FlowKey], truth: dict[FlowKey, dict[str, Any]]) -> Agreement:
    """Set comparison of a tool's AI flows with the truth's."""
    return Agreement(len(found & truth.keys()), len(truth), sorted(truth.keys() - found), sorted(found - truth.keys()))


def missed_by_evidence(missed: list[FlowKey], truth: dict[FlowKey, dict[str, Any]]) -> dict[str, int]:
    """Missed flows counted by the evidence the truth says they carry (tls-sni, quic-sni, ...)."""
    return dict(Counter(truth[k]["evidence"] for k in missed).most_common())


def prefix_capture(src: Path, dst: Path, packets: int) -> int:
    """Copy the first `packets` records of a classic pcap (the generator's format); returns
    how many were copied. The first half of a mix is the same traffic over half the time."""
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        head = f.read(_PCAP_HEADER)
        if len(head) < _PCAP_HEADER or struct.unpack_from("<I", head)[0] != _PCAP_MAGIC_US:
            raise ValueError(f"{src}: not a little-endian microsecond pcap")
        out.write(head)
        while n < packets:
            rec = f.read(_RECORD_HEADER.size)
            if len(rec) < _RECORD_HEADER.size:
                break
            data = f.read(_RECORD_HEADER.unpack(rec)[2])
            out.write(rec)
            out.write(data)
            n += 1
    return n


def record_time(path: Path, n: int) -> float:
    """Timestamp (s) of the n-th record (1-based) of a classic pcap, or of its last one."""
    ts = 0.0
    with open(path, "rb") as f:
        f.seek(_PCAP_HEADER)
        for _ in range(n):
            rec = f.read(_RECORD_HEADER.size)
            if len(rec) < _RECORD_HEADER.size:
                break
            sec, usec, incl, _ = _RECORD_HEADER.unpack(rec)
            ts = sec + usec / 1e6
            f.seek(incl, os.SEEK_CUR)
    return ts


def iso_seconds(text: str) -> float:
    """A truth manifest's ISO 8601 UTC time ("...Z") as POSIX seconds."""
    return datetime.fromisoformat(text).timestamp()


def machine() -> dict[str, Any]:
    """What was measured and what else the machine was doing: the checkout (commit, "-dirty"
    with uncommitted changes), load averages and core count, for the result file."""
    one, five, fifteen = os.getloadavg()
    git = ["git", "describe", "--always", "--dirty"]
    r = subprocess.run(git, cwd=ROOT, check=False, capture_output=True, text=True)
    return {
        "checkout": r.stdout.strip() or "unknown",
        "load_avg": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "cpus": os.cpu_count(),
    }


def result_path(kind: str, results_dir: Path = RESULTS_DIR) -> Path:
    """benchmarks/results/<UTC date and time>-<kind>.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir / f"{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%SZ')}-{kind}.json"


def human_bytes(n: float) -> str:
    """1.5 GB, 58 MB, 12 kB (decimal units, as the issue writes them)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"
