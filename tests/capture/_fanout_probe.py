"""Run inside a network namespace made by test_fanout.py: two capture handles in one fanout
group on one end of a veth pair, frames of many clients sent into the other end; prints,
as JSON, which handle each client's frames reached. With the argument `filters`: a full
bulk-drop list on a live handle instead, and how often each frame of `filter_cases` arrived
(under the namespace's own net.core.optmem_max, which the test may have lowered)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path as FsPath

sys.path.insert(0, str(FsPath(__file__).resolve().parents[2]))

from detector.capture.bulk_filter import MAX_FILTER_FLOWS  # noqa: E402
from detector.capture.live import LiveInterface  # noqa: E402
from detector.decode.net import decode_frame  # noqa: E402
from detector.model import L4Packet  # noqa: E402
from detector.synth import builders as b  # noqa: E402
from detector.synth.path import Path  # noqa: E402

RESOLVER, SERVER, RESOLVER6, SERVER6 = "10.10.0.53", "104.18.0.77", "2001:db8:53::53", "2001:db8:77::77"


def client_frames(i: int) -> tuple[str, list[bytes]]:
    """A client's lookup (query, answer), a TLS flow (both directions) and a QUIC flow;
    clients 1-90 are IPv4 (10.20.0.i), 91-120 IPv6; every third is behind a VLAN tag,
    every fifth IPv4 one has its answer in fragments, every seventh also talks NTP (equal
    ports)."""
    v6 = i > 90
    client = f"2001:db8:1::{i - 90:x}" if v6 else f"10.20.0.{i}"
    kw = {"vlan": 120} if i % 3 == 0 else {}
    dns = Path(b.ip_bytes(client), b.ip_bytes(RESOLVER6 if v6 else RESOLVER), **kw)
    web = Path(b.ip_bytes(client), b.ip_bytes(SERVER6 if v6 else SERVER), **kw)
    port = 40000 + i
    frames = [dns.udp(True, port, 53, b.dns_query(i, "chatgpt.com", 1))]
    if i % 5 == 0 and not v6:
        answers = [("chatgpt.com", 1, 60, f"104.18.0.{k}") for k in range(1, 111)]
        src, dst = dns.ends(False)
        payload = b.udp(src, dst, 53, port, b.dns_response(i, "chatgpt.com", 1, answers))
        frames += [
            dns.frame_ip(False, piece) for piece in b.ipv4_fragments(src, dst, b.UDP_PROTO, payload, mtu=1500, ident=i)
        ]
    else:
        frames.append(dns.udp(False, 53, port, b.dns_response(i, "chatgpt.com", 1, [("chatgpt.com", 1, 60, SERVER)])))
    frames += [
        web.tcp_frame(True, port, 443, 1, 0, 0x02, 64240, b""),
        web.tcp_frame(False, 443, port, 7, 2, 0x12, 64240, b""),
        web.tcp_frame(True, port, 443, 2, 8, 0x18, 502, b"\x16\x03\x01" + bytes(100)),
        web.udp(True, port + 1, 443, b"\xc3" + bytes(1199)),
        web.udp(False, 443, port + 1, b"\x40" + bytes(50)),
    ]
    if i % 7 == 0:
        frames += [web.udp(True, 123, 123, bytes(48)), web.udp(False, 123, 123, bytes(48))]
    return client, frames


def filter_cases() -> tuple[list[tuple[bytes, int, bytes, int]], dict[str, bytes]]:
    """A full bulk list (half IPv4, half IPv6), and frames named by what the filter must do
    with them: "drop ..." or "keep ...", for a flow at the start and at the end of the list,
    untagged, behind one VLAN tag and behind two. Each listed flow runs from port 443 to
    its client port 50000 + i; payload sizes tell the frames apart."""
    n = MAX_FILTER_FLOWS
    v4 = [(b.ip_bytes(f"104.18.{i // 250}.{i % 250 + 1}"), 443, b.ip_bytes(f"10.20.{i % 7}.{i % 200 + 1}"), 50000 + i)
          for i in range(n // 2)]  # fmt: skip
    v6 = [(b.ip_bytes(f"2001:db8::{i:x}"), 443, b.ip_bytes(f"2001:db8:1::{i:x}"), 50000 + i) for i in range(n - n // 2)]
    frames: dict[str, bytes] = {}
    size = iter(range(100, 100_000, 10))
    for family, (server, _, client, cport) in (("ipv4", v4[-1]), ("ipv4 first", v4[0]), ("ipv6", v6[-1])):
        for tags in ((), (120,), (120, 7)):
            web = Path(client, server, **({"vlan": tags[0]} if tags else {}))
            cases = {
                "drop download": web.tcp_frame(False, 443, cport, 9, 2, 0x18, 501, bytes(next(size))),
                "drop ack": web.tcp_frame(False, 443, cport, 9, 2, 0x10, 501, bytes(next(size))),
                "drop quic short header": web.udp(False, 443, cport, b"\x40" + bytes(next(size))),
                "keep syn-ack": web.tcp_frame(False, 443, cport, 7, 2, 0x12, 64240, bytes(next(size))),
                "keep fin": web.tcp_frame(False, 443, cport, 9, 2, 0x11, 501, bytes(next(size))),
                "keep rst": web.tcp_frame(False, 443, cport, 9, 2, 0x14, 0, bytes(next(size))),
                "keep upload": web.tcp_frame(True, cport, 443, 2, 9, 0x18, 502, bytes(next(size))),
                "keep quic long header": web.udp(False, 443, cport, b"\xc3" + bytes(next(size))),
                "keep another client port": web.tcp_frame(False, 443, cport + 1000, 9, 2, 0x18, 501, bytes(next(size))),
                "keep another server port": web.tcp_frame(False, 8443, cport, 9, 2, 0x18, 501, bytes(next(size))),
            }
            if not web.ipv6:
                src, dst = web.ends(False)
                payload = b.udp(src, dst, 443, cport, b"\x40" + bytes(2000 + next(size)))
                pieces = b.ipv4_fragments(src, dst, b.UDP_PROTO, payload, mtu=1500, ident=7)
                cases |= {f"keep fragment {k}": web.frame_ip(False, piece) for k, piece in enumerate(pieces)}
            for what, frame in cases.items():
                if len(tags) == 2:  # an outer 802.1ad tag, which the kernel takes into the metadata
                    frame = frame[:12] + b"\x88\xa8" + tags[1].to_bytes(2, "big") + frame[12:]
                verb, rest = what.split(" ", 1)
                frames[f"{verb} {family} {len(tags)} tags: {rest}"] = frame
    return v4 + v6, frames


def run_filters() -> dict:
    """Attach the full bulk list on a live handle, send every case once: how many flows the
    kernel took, and how often each frame arrived."""
    flows, frames = filter_cases()
    handle = LiveInterface("fo1", snaplen=9000, promiscuous=True, buffer_mib=4, bpf="")
    held = handle.drop_flows(flows)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind(("fo0", 0))
    for frame in frames.values():
        out.send(frame)
    time.sleep(0.5)
    got = [data for _, _, data in handle.drain(1000)]
    return {"listed": len(flows), "held": held, "arrived": {name: got.count(frame) for name, frame in frames.items()}}


def main() -> None:
    subprocess.run(["ip", "link", "add", "fo0", "type", "veth", "peer", "name", "fo1"], check=True)
    for dev in ("fo0", "fo1"):
        # No IPv6 on the pair: no router solicitations of its own among the frames.
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
        subprocess.run(["ip", "link", "set", dev, "up", "mtu", "9000"], check=True)
    if sys.argv[1:] == ["filters"]:
        print(json.dumps(run_filters()))
        return
    handles = [LiveInterface("fo1", snaplen=9000, promiscuous=True, buffer_mib=4, bpf="") for _ in range(2)]
    for h in handles:
        h.join_fanout(4242)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind(("fo0", 0))
    sent: dict[str, int] = {}  # frames per client
    for i in range(1, 121):
        client, frames = client_frames(i)
        sent[client] = len(frames)
        for frame in frames:
            out.send(frame)
    time.sleep(0.5)
    where: dict[str, list[int]] = {}
    for k, h in enumerate(handles):
        for ts, lt, data in h.drain(1000):
            pkt = decode_frame(ts, lt, data)
            if type(pkt) is L4Packet:
                src, dst = b.ip_text(pkt.src), b.ip_text(pkt.dst)
                # NTP (equal ports) is hashed on both addresses: a conversation of its own.
                key = (src if src in sent else dst) + ("/ntp" if pkt.sport == pkt.dport else "")
                where.setdefault(key, []).append(k)
    print(json.dumps({"sent": sent, "where": where}))


if __name__ == "__main__":
    main()
