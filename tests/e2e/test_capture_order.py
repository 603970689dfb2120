"""A mirror port that merges several sources (both directions of a link, several SPAN
sessions) can deliver a DNS answer after the first packets of the flow it names, though it
came first on the wire. The events must not depend on that interleaving."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import make_config

from detector.app import build_classifier
from detector.capture.pcapfile import iter_frames
from detector.decode.net import decode_frame
from detector.model import DNS_UDP_PORTS, IPFragment, L4Packet, Stats, UsageEvent
from detector.pipeline import Pipeline

TRACES = sorted((Path(__file__).resolve().parents[1] / "golden" / "traces").glob("*.pcap*"))
# How many later frames a DNS datagram is held back behind: more than a handshake.
LAG = 12


def _is_dns(ts: float, linktype: int, data: bytes) -> bool:
    """Whether this frame is DNS (every fragment in these traces is DNS)."""
    pkt = decode_frame(ts, linktype, data)
    if type(pkt) is IPFragment:
        return True
    return type(pkt) is L4Packet and pkt.proto == 17 and (pkt.sport in DNS_UDP_PORTS or pkt.dport in DNS_UDP_PORTS)


def dns_read_late(frames: Iterable[tuple[float, int, bytes]], lag: int = LAG) -> Iterator[tuple[float, int, bytes]]:
    """The frames with every DNS datagram delivered `lag` frames later than it was captured."""
    held: list[tuple[int, tuple[float, int, bytes]]] = []
    for i, frame in enumerate(frames):
        while held and held[0][0] <= i:
            yield held.pop(0)[1]
        if _is_dns(*frame):
            held.append((i + lag, frame))
        else:
            yield frame
    for _, frame in held:
        yield frame


def _events(frames: Iterable[tuple[float, int, bytes]], tmp_path: Path) -> list[tuple]:
    cfg = make_config(tmp_path)
    events: list[UsageEvent] = []
    pipe = Pipeline(cfg, build_classifier(cfg), events.append, Stats())
    pipe.run(frames)
    pipe.finish()
    return sorted(
        (e.kind, e.service, e.server_name, e.evidence, e.client, e.server_port, e.packets, e.bytes_up, e.bytes_down)
        for e in events
    )


def test_reordering_helper_really_delays_dns() -> None:
    trace = next(t for t in TRACES if t.name.startswith("ech-cloudflare-after-dns"))
    frames = list(iter_frames(trace))
    late = list(dns_read_late(frames))
    assert sorted(late) == sorted(frames) and late != frames


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_events_do_not_depend_on_dns_being_read_after_the_flow_it_names(trace: Path, tmp_path: Path) -> None:
    in_order = _events(iter_frames(trace), tmp_path)
    assert _events(dns_read_late(iter_frames(trace)), tmp_path) == in_order
