"""Command line: `python -m detector.synth {sample,golden,office} ...`.

  sample [--out-dir samples]          the bundled office-sample.pcap + office-sample.truth.json
  golden DIR                          every golden trace + README.md + MANIFEST.json
  office OUT.pcap [options]           an office capture of any size (benchmarks)
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from detector.synth.golden import write_golden
from detector.synth.office import SAMPLE_START, generate_office, generate_sample


def _start(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one generator; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m detector.synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="write samples/office-sample.pcap and its truth manifest")
    s.add_argument("--out-dir", type=Path, default=Path("samples"))
    g = sub.add_parser("golden", help="write the golden traces")
    g.add_argument("directory", type=Path)
    o = sub.add_parser("office", help="write an office capture of any size")
    o.add_argument("out", type=Path)
    o.add_argument("--clients", type=int, default=60)
    o.add_argument("--duration", type=float, default=300.0, help="seconds in which flows start")
    o.add_argument("--seed", type=int, default=1)
    o.add_argument("--rate", type=float, default=1.0, help="flows per client per minute")
    o.add_argument("--ai-share", type=float, default=0.3)
    o.add_argument("--start", type=_start, default=SAMPLE_START, help="ISO 8601 UTC start time")
    o.add_argument("--truth", type=Path, help="truth manifest (.json document or .jsonl lines)")
    o.add_argument("--snap-bulk", type=int, help="keep only this many payload bytes of bulk packets")
    o.add_argument("--large-upload", type=int, default=25_000_000, help="bytes of the large upload (0: none)")
    o.add_argument("--no-specials", action="store_true", help="only the Poisson visits, no fixed cases")
    o.add_argument("--max-packets", type=int, help="stop after this many packets")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    if a.cmd == "sample":
        a.out_dir.mkdir(parents=True, exist_ok=True)
        summary = generate_sample(a.out_dir / "office-sample.pcap", a.out_dir / "office-sample.truth.json")
    elif a.cmd == "golden":
        files = write_golden(a.directory)
        print(f"{len(files)} traces in {a.directory}", file=sys.stderr)
        return 0
    else:
        summary = generate_office(a.out, clients=a.clients, duration_s=a.duration, seed=a.seed,
                                  flows_per_client_per_minute=a.rate, ai_share=a.ai_share, start=a.start,
                                  truth=a.truth, snap_bulk=a.snap_bulk, large_upload_bytes=a.large_upload,
                                  specials=not a.no_specials, max_packets=a.max_packets)
    dt = time.perf_counter() - t0
    print(f"{summary.packets} packets, {summary.bytes} bytes captured ({summary.wire_bytes} on the wire), "
          f"{summary.flows} flows, {summary.lookups} lookups, {len(summary.services)} AI services, "
          f"{summary.last_ts - summary.first_ts:.1f} s of traffic, written in {dt:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
