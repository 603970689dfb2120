"""Live-rate benchmark: the daemon on a veth pair, tcpreplay sending the office mix at
increasing rates; the highest rate with zero kernel drops and zero missed AI flows.

    sudo python -m benchmarks.live [--rates 100,200,400,700,1000,1500] [--packets 5000000] [--seconds 30]

Needs root, iproute2 and tcpreplay (Debian). Two network namespaces made here are joined by
a veth pair; tcpreplay writes the mix's frames into one end and `shadowai run` captures on
the other. The namespaces have no other interface and no route: the 10.x/104.x addresses in
the frames only ever travel the veth. Per rate the daemon is started afresh (so its counters
are per step) and tcpreplay sends the start of the mix, as many packets as `--seconds` hold
at that rate (`--mbps=R --limit=N --preload-pcap`); once the daemon has reported its flows,
its /metrics are read and it is stopped. The daemon writes its events to a DuckDB file (with
client addresses in the clear): the truth's AI flows it never stored, not even when SIGTERM
flushed its open flows, are listed per step.

A step passes when shadowai_capture_kernel_drops_total is 0 and shadowai_ai_flows_total
reaches the number of the truth's AI flows that start in the part sent (flows that start in
its last MARGIN_S of traffic time may or may not have sent their name, and count either way).
Steps last long (30 s) because the capture ring (64 MiB) would otherwise absorb a short burst
and hide a daemon that falls behind. tcpreplay's achieved rate on a veth can be below the
requested one (it is one process on one core); the table names the achieved rate.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/live.py` as well as `python -m benchmarks.live`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.mix import (
    ROOT,
    Mix,
    MixParams,
    ensure_mix,
    flow_key,
    iso_seconds,
    load_matcher,
    machine,
    record_time,
    result_path,
    truth_ai_flows,
    truth_records,
)

RATES_MBPS = (100, 200, 400, 700, 1000, 1500)
LIVE_PACKETS = 5_000_000  # ~3.7 GB: 30 s at 1 Gbit/s, so even the fast steps outlast the ring
STEP_S = 30.0  # traffic time of one step at its nominal rate
MARGIN_S = 2.0  # traffic time before the cut in which a flow may not have sent its name yet
# Flow idle timeout of the daemon under test. tcpreplay --mbps paces by bytes, which squeezes
# the mix's traffic time at least 15-fold at 100 Mbit/s: its longest in-flow gap (60 s of
# think time) becomes <= 4 s.
IDLE_TIMEOUT_S = 10.0
LINGER_S = 1.0
SETTLE_S = IDLE_TIMEOUT_S + LINGER_S + 15.0  # after the last frame, until every flow is reported
START_TIMEOUT_S = 60.0  # daemon start until /metrics answers
METRICS_PORT = 9810  # inside the sensor namespace, whose loopback is its own
VETH_MTU = 9000  # jumbo: every frame a capture may hold fits, whatever its size

_ACTUAL = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")
_RATED = re.compile(r"Rated: ([\d.]+) Bps, ([\d.]+) Mbps, ([\d.]+) pps")
_FAILED = re.compile(r"Failed packets:\s+(\d+)")


@dataclass(slots=True)
class Replay:
    """What tcpreplay says it did."""

    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    mbps: float = 0.0
    pps: float = 0.0
    failed: int = 0


@dataclass(slots=True)
class Step:
    """One rate: what was sent, what the daemon counted."""

    requested_mbps: int
    achieved_mbps: float
    pps: float
    seconds: float
    sent: int
    failed: int
    captured: int
    kernel_drops: int
    ai_flows: int
    expected_ai_flows: int  # truth AI flows that start before the cut minus MARGIN_S
    borderline_ai_flows: int  # ... that start within MARGIN_S of the cut (may or may not count)
    load_avg: float
    daemon_cores: float  # CPU time the daemon's processes took during the replay / its length
    ok: bool
    # Truth AI flows of the part sent (before its last MARGIN_S) that the daemon never
    # stored, not even when SIGTERM flushed its open flows: "client server:port name (evidence)".
    missed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Expectation:
    """The truth's AI flows by start time, and how many a prefix of the mix must hold."""

    starts: list[float]  # sorted flow start times (POSIX s)
    flows: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # mix.truth_ai_flows

    def within(self, cut: float) -> tuple[int, int]:
        """(sure, borderline) for a prefix whose last packet is at `cut`."""
        sure = bisect.bisect_left(self.starts, cut - MARGIN_S)
        return sure, bisect.bisect_left(self.starts, cut) - sure

    def missed(self, cut: float, stored: set[tuple]) -> list[str]:
        """The sure flows of a prefix (see `within`) whose key the daemon never stored."""
        return sorted(
            f"{k[0]} {k[1]}:{k[2]} {k[3]} ({r['evidence']})"
            for k, r in self.flows.items()
            if k not in stored and iso_seconds(r["ts"]) < cut - MARGIN_S
        )


def parse_tcpreplay(text: str) -> Replay:
    """tcpreplay's summary (stdout): packets, bytes, seconds, rate, failed sends."""
    r = Replay()
    if m := _ACTUAL.search(text):
        r.packets, r.bytes, r.seconds = int(m[1]), int(m[2]), float(m[3])
    if m := _RATED.search(text):
        r.mbps, r.pps = float(m[2]), float(m[3])
    if m := _FAILED.search(text):
        r.failed = int(m[1])
    return r


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of one metric (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def tree_cpu_seconds(root: int) -> float:
    """User and system CPU seconds used so far by process `root` and every descendant
    alive now (the daemon and its capture workers), from /proc."""
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        # after the command: state, ppid, ..., utime and stime are fields 14 and 15 of stat(5)
        parent[int(entry)] = int(fields[1])
        spent[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, used in spent.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += used
    return total


def why_not() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a veth pair, packet capture): run it with sudo"
    for exe, pkg in (("ip", "iproute2"), ("tcpreplay", "tcpreplay")):
        if shutil.which(exe) is None:
            return f"needs `{exe}` (Debian package {pkg})"
    return None  # whether namespaces can be made here shows when Veth makes them


class NamespaceError(Exception):
    """This machine (container, kernel) does not let us make network namespaces."""


class Veth:
    """Namespaces `sensor` and `office` joined by a veth pair (cap in sensor, inj in office)."""

    def __init__(self, mtu: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.sensor, self.office = f"sai-bs{tag}", f"sai-bo{tag}"
        self.cap, self.inj = f"saibcap{tag}"[:15], f"saibinj{tag}"[:15]
        try:
            for ns in (self.sensor, self.office):
                r = subprocess.run(["ip", "netns", "add", ns], check=False, capture_output=True, text=True)
                if r.returncode:
                    raise NamespaceError(f"cannot create a network namespace here: {r.stderr.strip()}")
            subprocess.run(["ip", "link", "add", self.cap, "mtu", str(mtu), "netns", self.sensor, "type", "veth",
                            "peer", "name", self.inj, "mtu", str(mtu), "netns", self.office], check=True)  # fmt: skip
            for ns, dev in ((self.sensor, self.cap), (self.office, self.inj)):
                # No IPv6 on the pair: no router solicitations or DAD probes mixed into the counts.
                self.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                self.run(ns, "ip", "link", "set", "lo", "up")
                self.run(ns, "ip", "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def run(ns: str, *cmd: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside a namespace; raises when it fails."""
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them)."""
        for ns in (self.sensor, self.office):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class Daemon:
    """`shadowai run` on the sensor end, metrics on the namespace's own loopback."""

    def __init__(self, veth: Veth, workdir: Path, workers: int | None) -> None:
        self.veth = veth
        cfg = workdir / "shadowai.yaml"
        self.db = workdir / "events.duckdb"
        self.db.unlink(missing_ok=True)
        # A real database, as a sensor runs, with addresses in the clear so that the events
        # can be compared with the truth.
        cfg.write_text(
            "sensor: {name: bench-live}\n"
            f"privacy: {{key_file: {workdir / 'key'}, raw_clients: true}}\n"
            f"store: {{path: {self.db}}}\n"
            f"flows: {{idle_timeout: {IDLE_TIMEOUT_S}, linger: {LINGER_S}}}\n"
        )
        argv = [sys.executable, "-m", "detector", "run", "--config", str(cfg), "--interface", veth.cap,
                "--metrics-listen", f"127.0.0.1:{METRICS_PORT}"]  # fmt: skip
        if workers:
            argv += ["--workers", str(workers)]
        self.argv = argv
        self.log_path = workdir / "daemon.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(["ip", "netns", "exec", veth.sensor, *argv], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while "shadowai_build_info" not in self.metrics():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start: {self.output()}")
            time.sleep(0.3)

    def metrics(self) -> str:
        """The /metrics text ('' while it does not answer)."""
        code = (f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', "
                f"timeout=5).read().decode())")  # fmt: skip
        r = subprocess.run(["ip", "netns", "exec", self.veth.sensor, sys.executable, "-c", code],
                           check=False, capture_output=True, text=True)  # fmt: skip
        return r.stdout if r.returncode == 0 else ""

    def stop(self) -> None:
        """SIGTERM (`ip netns exec` execs, so the pid is the daemon's), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def stored_flows(self) -> set[tuple]:
        """The AI flows in its database (after it stopped), keyed like the truth's."""
        import duckdb

        con = duckdb.connect(str(self.db), read_only=True)
        try:
            rows = con.execute(
                "SELECT client, server_ip, server_port, server_name FROM events WHERE kind = 'flow' AND service <> ''"
            ).fetchall()
        finally:
            con.close()
        return {flow_key(*row) for row in rows}

    def output(self) -> str:
        """The end of the daemon's log."""
        self.log.flush()
        return self.log_path.read_text()[-2000:]


def supports_workers() -> bool:
    """Whether `shadowai run` has --workers in this checkout."""
    argv = [sys.executable, "-m", "detector", "run", "--help"]
    r = subprocess.run(argv, cwd=ROOT, check=False, capture_output=True, text=True)
    return "--workers" in r.stdout


def run_step(
    veth: Veth, mix: Mix, rate: int, want: Expectation, workers: int | None, seconds: float, workdir: Path
) -> Step:
    """One rate: fresh daemon, send `seconds` worth of the mix, wait until its flows are
    reported, read /metrics."""
    total = mix.info["packets"]
    limit = min(total, math.ceil(rate * 1e6 / 8 * seconds / (mix.info["bytes"] / total)))
    cut = record_time(mix.pcap, limit) if limit < total else math.inf
    sure, borderline = want.within(cut)
    daemon = Daemon(veth, workdir, workers)
    try:
        budget = seconds * 3 + 120  # preloading plus a replay three times slower than asked
        cmd = ["tcpreplay", f"--intf1={veth.inj}", f"--mbps={rate}", "--preload-pcap"]
        cpu_before = tree_cpu_seconds(daemon.proc.pid)
        r = veth.run(veth.office, *cmd, *([f"--limit={limit}"] if limit < total else []), str(mix.pcap),
                     timeout=budget)  # fmt: skip
        replay = parse_tcpreplay(r.stdout + r.stderr)
        # --preload-pcap reads the file before sending: the daemon idles meanwhile, and its
        # CPU over the sending time alone is what the traffic cost it.
        cores = (tree_cpu_seconds(daemon.proc.pid) - cpu_before) / replay.seconds if replay.seconds else 0.0
        load = os.getloadavg()[0]
        deadline = time.monotonic() + SETTLE_S
        text = daemon.metrics()
        while metric_sum(text, "shadowai_ai_flows_total") < sure + borderline and time.monotonic() < deadline:
            time.sleep(1.0)
            text = daemon.metrics()
        if not text:
            raise RuntimeError(f"the daemon stopped answering: {daemon.output()}")
    finally:
        daemon.stop()
    drops = int(metric_sum(text, "shadowai_capture_kernel_drops_total"))
    flows = int(metric_sum(text, "shadowai_ai_flows_total"))
    return Step(rate, replay.mbps, replay.pps, replay.seconds, replay.packets, replay.failed,
                int(metric_sum(text, "shadowai_capture_packets_total")), drops, flows, sure, borderline,
                round(load, 2), round(cores, 2), ok=drops == 0 and flows >= sure and replay.packets == limit,
                missed=want.missed(cut, daemon.stored_flows()))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every rate, print the table and the verdict, write the JSON file."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.live", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rates", default=",".join(map(str, RATES_MBPS)), help="Mbit/s to request, comma-separated")
    p.add_argument("--packets", type=int, default=LIVE_PACKETS, help=f"size of the mix ({LIVE_PACKETS:,})")
    p.add_argument("--seconds", type=float, default=STEP_S, help=f"traffic per step at its rate ({STEP_S:g} s)")
    p.add_argument("--clients", type=int, default=6000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--workers",
        default="auto",
        help="--workers for shadowai run: a number, or auto (the core count when the option exists)",
    )
    p.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "data", help="where mixes are cached")
    p.add_argument("--json", type=Path, help="result file (default benchmarks/results/<date>-live.json)")
    a = p.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)

    if reason := why_not():
        print(f"live benchmark skipped: {reason}", file=sys.stderr)
        return 0
    rates = [int(x) for x in a.rates.split(",") if x.strip()]
    has_workers = supports_workers()
    workers = (os.cpu_count() or 1) if has_workers else None
    if a.workers != "auto":
        workers = int(a.workers) if has_workers else None
        if not has_workers:
            log("`shadowai run` has no --workers option in this checkout; running one process")
    load_before = machine()
    try:
        veth = Veth(VETH_MTU)
    except NamespaceError as exc:
        print(f"live benchmark skipped: {exc}", file=sys.stderr)
        return 0
    work = Path(tempfile.mkdtemp(prefix="shadowai-live-"))
    try:
        mix = ensure_mix(MixParams(packets=a.packets, clients=a.clients, seed=a.seed), a.data_dir, log)
        matcher = load_matcher()
        want = Expectation(sorted(iso_seconds(r["ts"]) for r in truth_records(mix.truth)
                                  if r["kind"] == "flow" and r["name"] and matcher.match(r["name"])),
                           truth_ai_flows(mix.truth, matcher))  # fmt: skip
        log(
            f"live: {mix.info['packets']:,} packets / {mix.info['bytes'] / 1e6:.0f} MB, {len(want.starts)} AI flows, "
            f"rates {rates} Mbit/s for up to {a.seconds:g} s each, "
            f"workers {workers if has_workers else '(no --workers option)'}, load {load_before['load_avg']}"
        )
        steps: list[Step] = []
        for rate in rates:
            step = run_step(veth, mix, rate, want, workers, a.seconds, work)
            steps.append(step)
            log(
                f"  {rate:>5} Mbit/s requested: {step.achieved_mbps:8.1f} achieved, {step.captured:,} captured, "
                f"{step.kernel_drops:,} kernel drops, AI flows {step.ai_flows}/{step.expected_ai_flows} "
                f"{'ok' if step.ok else 'FAIL'} (daemon {step.daemon_cores} cores, load {step.load_avg})"
            )
            for flow in step.missed[:10]:
                log(f"    never stored: {flow}")
    finally:
        veth.close()
        shutil.rmtree(work, ignore_errors=True)
    load_after = machine()
    _print(steps, mix.info, len(want.starts), workers, load_before, load_after)
    best = max((s for s in steps if s.ok), key=lambda s: s.achieved_mbps, default=None)
    doc = {
        "kind": "live",
        "started_load": load_before,
        "finished_load": load_after,
        "mix": mix.info,
        "workers": workers,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "step_s": a.seconds,
        "ai_flows_in_mix": len(want.starts),
        "steps": [asdict(s) for s in steps],
        "best": asdict(best) if best else None,
    }
    out = a.json or result_path("live")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nresults: {out}")
    return 0


def _print(
    steps: list[Step],
    info: dict[str, Any],
    in_mix: int,
    workers: int | None,
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    print(f"\nmix: {info['packets']:,} packets / {info['bytes'] / 1e6:.0f} MB, {in_mix} AI flows; "
          f"daemon workers: {workers or 1}; checkout {before['checkout']}; {before['cpus']} cores, "
          f"load average {before['load_avg']} before, {after['load_avg']} after\n")  # fmt: skip
    print(
        "| requested Mbit/s | achieved Mbit/s | packets/s | seconds | sent | captured | kernel drops "
        "| AI flows (expected) | daemon CPU (cores) | result |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in steps:
        top = s.expected_ai_flows + s.borderline_ai_flows
        expected = f"{s.expected_ai_flows}" + (f"-{top}" if top > s.expected_ai_flows else "")
        print(
            f"| {s.requested_mbps} | {s.achieved_mbps:.1f} | {s.pps:,.0f} | {s.seconds:.1f} | {s.sent:,} | "
            f"{s.captured:,} | {s.kernel_drops:,} | {s.ai_flows} of {expected} | {s.daemon_cores:.2f} | "
            f"{'ok' if s.ok else 'FAIL'} |"
        )
    ok = [s for s in steps if s.ok]
    if ok:
        best = max(ok, key=lambda s: s.achieved_mbps)
        first_fail = next((s for s in steps if not s.ok), None)
        print(
            f"\nhighest rate with zero kernel drops and zero missed AI flows: {best.achieved_mbps:.0f} Mbit/s "
            f"achieved ({best.requested_mbps} requested, {best.pps:,.0f} packets/s for {best.seconds:.1f} s)"
            + (f"; first failing step: {first_fail.requested_mbps} Mbit/s requested" if first_fail else "")
        )
    else:
        print("\nno rate passed (kernel drops or missed AI flows at every step)")


if __name__ == "__main__":
    sys.exit(main())
