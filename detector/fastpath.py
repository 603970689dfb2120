"""The offline fast path: two passes over a capture, most packets never reaching Python.

Pass 1 (discovery) sees, of IPv4 TCP/UDP, only the first packets of each flow direction
(selected in C by libpcap's BPF and pcapy-ng's flow-head classifier) plus every other packet
whole, and learns which server addresses matter: those of flows that make a stored event
(AI service, vendor range, encrypted-DNS resolver, AI-looking candidate) and of flows whose
handshake was still incomplete when their head ended. Pass 2 runs the ordinary pipeline on
the packets of exactly those addresses plus all DNS and non-IPv4 traffic, so every event,
byte count and timeout comes out as the full path gives it. Flows to other servers, the
bulk of a capture, are skipped in C.

Not exact in one case: when the flow table overflows, which flows are evicted depends on
which other flows share it, and pass 2 holds fewer. Anomaly counts cover the packets that
reached Python.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from detector.capture.libpcap import Recording, fast_path_linktype, feed_partitioned, flow_key
from detector.capture.pcapfile import CaptureError
from detector.config import Config
from detector.decode.tunnels import UDP_TUNNELS
from detector.model import DNS_UDP_PORTS, Stats, UsageEvent
from detector.flows.table import Flow
from detector.pipeline import Pipeline

# Packets per flow direction that pass 1 looks at: SYN, ACK and a ClientHello of up to
# six segments (a post-quantum hello needs two; the largest seen in public traces, 11 kB
# at MTU 300, needs more and simply stays "unresolved", so pass 2 sees it whole).
FLOW_HEAD_PACKETS = 8

# UDP that must reach Python whole: DNS feeds the cache, tunnels carry whole flows inside.
PYTHON_UDP_PORTS = frozenset(DNS_UDP_PORTS | set(UDP_TUNNELS))
# Flows that pass 1 named and found not to matter, kept so that pass 2 can skip their
# packets even when their server is discovered (a CDN address that an AI service shares),
# and as many named ones that matter. Beyond this many, further flows just go through
# Python in pass 2.
MAX_QUIET_FLOWS = 100_000
# Pass 1 keeps what it read for the Python part (DNS, IPv6, tunnels) up to this many bytes,
# so that pass 2 need not read and filter the whole file a second time for it.
MAX_RECORDING_BYTES = 64 << 20


def usable(path: Path) -> bool:
    """Whether a file can take the fast path (plain pcap/pcapng libpcap reads, known link type)."""
    return fast_path_linktype(path) is not None


class TwoPass:
    """Discovery state kept across the files of one analysis (a flow may span two files)."""

    def __init__(self, cfg: Config, classifier: object) -> None:
        self.discovered: set[bytes] = set()
        self.skipped = 0  # packets the C classifier kept from Python in pass 1
        self.stats = Stats()
        self.discovery = Pipeline(cfg, classifier, self._event, self.stats)
        self.discovery.watch_servers = self._watch
        self.discovery.watch_named = self._named
        self.discovery.fingerprint = False
        # Both directions of IPv4 flows named in pass 1: not reportable / reportable. A
        # 5-tuple seen both ways (reused ports) is never skipped.
        self.quiet: set[bytes] = set()
        self.loud: set[bytes] = set()
        self.quiet_closed = False  # `loud` is full: no new quiet flows
        self._main: Pipeline | None = None  # whose lookups pass 1 reports

    def _watch(self, addr: bytes, reportable: bool) -> None:
        if reportable:
            self.discovered.add(addr)

    def _named(self, flow: Flow, reportable: bool) -> None:
        if len(flow.server) != 4:
            return  # only IPv4 TCP/UDP takes the C part
        up = flow_key(flow.proto, flow.client, flow.server, flow.cport, flow.sport)
        down = flow_key(flow.proto, flow.server, flow.client, flow.sport, flow.cport)
        if reportable:
            self.quiet.difference_update((up, down))
            if len(self.loud) < 2 * MAX_QUIET_FLOWS:
                self.loud.update((up, down))
            else:
                # A 5-tuple no longer remembered as reportable must never turn quiet.
                self.quiet_closed = True
        elif not self.quiet_closed and up not in self.loud and len(self.quiet) < 2 * MAX_QUIET_FLOWS:
            self.quiet.update((up, down))

    def _event(self, ev: UsageEvent) -> None:
        if ev.evidence == "dns":
            # Pass 1 sees every DNS datagram: its lookups are the main pipeline's, which
            # reports only DNS over TCP (a flow) in pass 2.
            if ev.transport == "udp" and self._main is not None:
                self._main.stats.events += 1
                self._main.emit(ev)
        elif ev.server_ip:
            self.discovered.add(socket.inet_pton(socket.AF_INET6 if ":" in ev.server_ip else socket.AF_INET, ev.server_ip))

    def analyze(self, path: Path, main: Pipeline, part: tuple[int, int] | None = None) -> None:
        """Both passes over one file; events come out of `main` as usual. Raises
        FastPathUnavailable, before `main` saw anything of the file, when libpcap cannot read
        the whole file (a truncated capture): the caller reads that one with the full path."""
        reporting = main.lookup_share
        self._main = main if reporting is not None else None
        self.discovery.lookup_share = reporting
        recording = Recording(MAX_RECORDING_BYTES)
        # Pass 2 reads the same DNS datagrams again (from the recording): parse them once.
        memo: dict[bytes, object] = {}
        self.discovery.dns_memo = main.dns_memo = memo
        try:
            _, admitted = feed_partitioned(
                path, self.discovery.feed, flow_heads=FLOW_HEAD_PACKETS, python_udp_ports=PYTHON_UDP_PORTS, part=part,
                record=recording,
            )  # fmt: skip
        except CaptureError as exc:
            raise FastPathUnavailable(str(exc)) from None
        # Flows still open at the end of the file have not been classified yet.
        reportable = self.discovery.reportable
        for flow in self.discovery.table.open_flows():
            if flow.inspecting or reportable(flow.name or flow.cache_name, flow.server, flow.sport):
                self.discovered.add(flow.server)
        v4 = b"".join(a for a in self.discovered if len(a) == 4)
        # Pass 2 re-reads packets pass 1 counted: its packet, anomaly and coverage counts
        # are not new.
        ms = main.stats
        kept = (ms.packets, ms.bytes, ms.frames_skipped, ms.dns_datagrams, dict(ms.anomalies))
        main.count_coverage = False
        main.lookup_share = None
        try:
            # Pass 2's C part reads every IPv4 TCP/UDP packet (pass 1's left server data out).
            read, _ = feed_partitioned(
                path, main.feed, addresses=v4 or b"\0\0\0\0", python_udp_ports=PYTHON_UDP_PORTS, part=part,
                skip=self.quiet, replay=recording.frames,
            )  # fmt: skip
            self.skipped += read - admitted
        finally:
            self.discovery.dns_memo = main.dns_memo = None
            main.count_coverage = True
            main.lookup_share = reporting
            ms.packets, ms.bytes, ms.frames_skipped, ms.dns_datagrams, ms.anomalies = kept

    def finish(self, main: Pipeline) -> None:
        """End of input: add what the discovery pass counted (it saw every flow) to the main
        pipeline's figures; events and byte counts are the main pass's."""
        self.discovery.finish()
        main.count_coverage = False
        main.finish()
        main.count_coverage = True
        ds = self.stats
        ds.packets += self.skipped
        # The main pass's events and flows are its own; everything counted per packet or
        # per flow seen is the discovery pass's.
        ds.events = ds.flows_evicted = ds.reassembly_overflows = ds.dns_cache_evictions = 0
        ds.files_read = ds.files_failed = 0
        add_stats(main.stats, ds)


class FastPathUnavailable(Exception):
    """libpcap could not read the file to its end; take the full path for it."""


# -- both cores: one file's flows in shares, one process per share ------------------------------

# What forked share processes inherit instead of receiving it pickled (a classifier holds
# compiled patterns and caches): set just before the pool starts.
_SHARED: tuple[Config, object] | None = None


def _share(args: tuple[Path, int, int]) -> tuple[list[UsageEvent], Stats]:
    path, k, n = args
    cfg, classifier = _SHARED  # type: ignore[misc]
    events: list[UsageEvent] = []
    main = Pipeline(cfg, classifier, events.append, Stats())
    # Every share sees all DNS (for its cache) and reports the lookups of its own clients.
    main.lookup_share = (k, n)
    two = TwoPass(cfg, classifier)
    two.analyze(path, main, part=(k, n))
    two.finish(main)
    return events, main.stats


def analyze_shared(path: Path, cfg: Config, classifier: object, shares: int) -> tuple[list[UsageEvent], Stats]:
    """One file on `shares` processes (a power of two), each taking the flows whose address
    hash falls in its share: the events of all shares, and their counters added up. Flows
    do not cross shares, so the result equals one process's; raises FastPathUnavailable
    when libpcap cannot read the file to its end."""
    import multiprocessing as mp

    global _SHARED
    _SHARED = (cfg, classifier)
    try:
        with mp.get_context("fork").Pool(shares) as pool:
            results = pool.map(_share, [(path, k, shares) for k in range(shares)])
    finally:
        _SHARED = None
    events: list[UsageEvent] = []
    total = Stats()
    for k, (evs, st) in enumerate(results):
        events.extend(evs)
        if k:
            # DNS reached every share: its datagrams count once, in share 0 (its anomalies
            # are counted by the share that reports the client's lookups).
            st.packets -= st.dns_datagrams
            st.dns_datagrams = 0
        add_stats(total, st)
    return events, total


def add_stats(into: Stats, other: Stats) -> None:
    """Add `other`'s counters to `into`."""
    for f in dataclasses.fields(Stats):
        mine, theirs = getattr(into, f.name), getattr(other, f.name)
        if isinstance(theirs, dict):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        else:
            setattr(into, f.name, mine + theirs)
