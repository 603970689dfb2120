"""Run inside a network namespace made by test_fanout.py: two capture handles in one fanout
group on one end of a veth pair, frames of many clients sent into the other end; prints,
as JSON, which handle each client's frames reached. With the argument `filters`: sets
bulk-drop lists on a live handle instead, each after a line `list NAME` on stderr, where
libpcap warns when the kernel refuses a program."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path as FsPath

sys.path.insert(0, str(FsPath(__file__).resolve().parents[2]))

from detector.capture.live import MAX_FILTER_FLOWS, LiveInterface, prefilter  # noqa: E402
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


def filter_lists() -> dict[str, list[tuple[str, int, str, int]]]:
    """Full bulk lists of each address family and mixed, and one too long for the kernel."""
    v4 = [(f"104.18.{i // 250}.{i % 250 + 1}", 443, f"10.10.{i % 7}.{i % 200 + 1}", 40000 + i) for i in range(64)]
    v6 = [(f"2001:db8::{i:x}", 443, "2001:db8:1::10", 40000 + i) for i in range(64)]
    n = MAX_FILTER_FLOWS
    return {"ipv4": v4[:n], "ipv6": v6[:n], "mixed": v4[: n // 2] + v6[: n - n // 2], "too long": v4}


def set_filters() -> None:
    handle = LiveInterface("fo1", snaplen=2048, promiscuous=True, buffer_mib=4, bpf="")
    for name, flows in filter_lists().items():
        print(f"list {name}", file=sys.stderr, flush=True)
        handle.set_filter(prefilter(flows))
    handle.close()


def main() -> None:
    subprocess.run(["ip", "link", "add", "fo0", "type", "veth", "peer", "name", "fo1"], check=True)
    for dev in ("fo0", "fo1"):
        # No IPv6 on the pair: no router solicitations of its own among the frames.
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
        subprocess.run(["ip", "link", "set", dev, "up", "mtu", "9000"], check=True)
    if sys.argv[1:] == ["filters"]:
        set_filters()
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
