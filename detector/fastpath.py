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

import socket
from pathlib import Path

from detector.capture.libpcap import fast_path_linktype, feed_partitioned
from detector.capture.pcapfile import CaptureError
from detector.config import Config
from detector.decode.tunnels import UDP_TUNNELS
from detector.model import DNS_UDP_PORTS, Stats, UsageEvent
from detector.pipeline import Pipeline

# Packets per flow direction that pass 1 looks at: SYN, ACK and a ClientHello of up to
# six segments (a post-quantum hello needs two; the largest seen in public traces, 11 kB
# at MTU 300, needs more and simply stays "unresolved", so pass 2 sees it whole).
FLOW_HEAD_PACKETS = 8

# UDP that must reach Python whole: DNS feeds the cache, tunnels carry whole flows inside.
PYTHON_UDP_PORTS = frozenset(DNS_UDP_PORTS | set(UDP_TUNNELS))


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

    def _watch(self, addr: bytes, reportable: bool) -> None:
        if reportable:
            self.discovered.add(addr)

    def _event(self, ev: UsageEvent) -> None:
        if ev.kind != "dns" and ev.server_ip:
            self.discovered.add(socket.inet_pton(socket.AF_INET6 if ":" in ev.server_ip else socket.AF_INET, ev.server_ip))

    def analyze(self, path: Path, main: Pipeline) -> None:
        """Both passes over one file; events come out of `main` as usual. Raises
        FastPathUnavailable, before `main` saw anything of the file, when libpcap cannot read
        the whole file (a truncated capture): the caller reads that one with the full path."""
        try:
            read, admitted = feed_partitioned(
                path, self.discovery.feed, flow_heads=FLOW_HEAD_PACKETS, python_udp_ports=PYTHON_UDP_PORTS
            )
        except CaptureError as exc:
            raise FastPathUnavailable(str(exc)) from None
        self.skipped += read - admitted
        # Flows still open at the end of the file have not been classified yet.
        reportable = self.discovery.reportable
        for flow in self.discovery.table.open_flows():
            if flow.inspecting or reportable(flow.name or flow.cache_name, flow.server, flow.sport):
                self.discovered.add(flow.server)
        v4 = b"".join(a for a in self.discovered if len(a) == 4)
        # Pass 2 re-reads packets pass 1 counted: its packet, anomaly and coverage counts
        # are not new.
        ms = main.stats
        kept = (ms.packets, ms.bytes, ms.frames_skipped, dict(ms.anomalies))
        main.count_coverage = False
        try:
            feed_partitioned(path, main.feed, addresses=v4 or b"\0\0\0\0", python_udp_ports=PYTHON_UDP_PORTS)
        finally:
            main.count_coverage = True
            ms.packets, ms.bytes, ms.frames_skipped, ms.anomalies = kept

    def finish(self, main: Pipeline) -> None:
        """End of input: add what the discovery pass counted (it saw every flow) to the main
        pipeline's figures; events and byte counts are the main pass's."""
        self.discovery.finish()
        main.count_coverage = False
        main.finish()
        main.count_coverage = True
        ms, ds = main.stats, self.stats
        ms.packets += ds.packets + self.skipped
        ms.bytes += ds.bytes
        ms.frames_skipped += ds.frames_skipped
        ms.flows_total += ds.flows_total
        ms.flows_named += ds.flows_named
        ms.flows_dns_only += ds.flows_dns_only
        for table_from, table_to in ((ds.flows_blind, ms.flows_blind), (ds.anomalies, ms.anomalies)):
            for kind, n in table_from.items():
                table_to[kind] = table_to.get(kind, 0) + n


class FastPathUnavailable(Exception):
    """libpcap could not read the file to its end; take the full path for it."""
