"""The traffic generator (detector.synth): valid bytes (checked with scapy, dpkt and tshark),
the shapes the sensor must cope with, determinism, and the bundled sample and golden traces."""

from __future__ import annotations

import io
import ipaddress
import json
import random
import re
import shutil
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decode import quic_crypto
from detector.synth import builders as b
from detector.synth import golden, opaque, tunnels
from detector.synth import world as w
from detector.synth.office import SAMPLE_PARAMS, generate_office, generate_sample
from detector.synth.path import Path as WirePath
from detector.synth.quic import DRAFT_29, VERSION_1, VERSION_2, QuicConversation
from detector.synth.tcp import TcpConversation

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "office-sample.pcap"
SAMPLE_TRUTH = ROOT / "samples" / "office-sample.truth.json"
GOLDEN = ROOT / "tests" / "golden" / "traces"
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

A = b.ip_bytes("10.20.1.23")
S = b.ip_bytes("104.18.1.2")
A6 = b.ip_bytes("2001:db8:90:1::25")
S6 = b.ip_bytes("2606:4700:4400::1")


def naive_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ones_sum_is_ffff(data: bytes) -> bool:
    """A header or segment including its checksum field verifies: its one's complement sum is -0."""
    return naive_checksum(data) == 0


# ---------------------------------------------------------------------------
# Checksums and the fast path
# ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(any))
def test_checksum_equals_the_rfc1071_word_loop(data: bytes) -> None:
    assert b.checksum(data) == naive_checksum(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, opaque.POOL_SIZE - 2000), st.integers(0, 1999))
def test_pool_sum_equals_word_sum_of_the_slice(at: int, n: int) -> None:
    assert opaque.pool_sum(at, n) == b.word_sum(opaque.POOL[at:at + n])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from([0x02, 0x10, 0x18, 0x11]),
       st.booleans(), st.booleans())
def test_path_fast_path_equals_builders(payload: bytes, seq: int, ack: int, flags: int, v6: bool, opts: bool) -> None:
    client, server = (A6, S6) if v6 else (A, S)
    options = b.SYN_OPTIONS if opts else b""
    fast = WirePath(client, server, ip_id=[7, 9])
    slow = WirePath(client, server, ip_id=[7, 9])
    frame = fast.tcp_frame(True, 51000, 443, seq, ack, flags, 1026, payload, None, options)
    seg = b.tcp(client, server, 51000, 443, seq, ack, flags, payload, window=1026, options=options)
    assert frame == slow.frame(True, b.TCP_PROTO, seg)


def test_tcp_and_ip_checksums_verify_with_scapy() -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    rng = random.Random(4)
    for i in range(60):
        payload = rng.randbytes(rng.randrange(0, 1460))
        pkt = b.ipv4(A, S, 6, b.tcp(A, S, 50000 + i, 443, rng.getrandbits(32), rng.getrandbits(32), 0x18, payload),
                     ident=rng.randrange(65536))
        assert ones_sum_is_ffff(pkt[:20])
        x = IP(pkt)
        assert x[TCP].load == payload if payload else True
        stored = x[TCP].chksum
        del x[TCP].chksum
        assert IP(bytes(x))[TCP].chksum == stored
        dgram = b.ipv6(A6, S6, 17, b.udp(A6, S6, 5353, 53, payload))
        y = IPv6(dgram)
        stored = y[UDP].chksum
        del y[UDP].chksum
        assert IPv6(bytes(y))[UDP].chksum == stored


def test_ipv6_extension_headers_chain_to_tcp_and_checksum_uses_final_header() -> None:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

    seg = b.tcp(A6, S6, 51000, 443, 1, 2, 0x18, b"hello")
    pkt = IPv6(b.ipv6(A6, S6, 6, seg, ext=((0, b""), (60, b""))))
    assert pkt.haslayer(IPv6ExtHdrHopByHop) and pkt.haslayer(IPv6ExtHdrDestOpt)
    stored = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert IPv6(bytes(pkt))[TCP].chksum == stored


def test_ipv4_fragments_carry_8_byte_multiples_and_reassemble() -> None:
    datagram = b.udp(S, A, 53, 53000, bytes(range(256)) * 8)
    frags = b.ipv4_fragments(S, A, 17, datagram, mtu=1500, ident=0x4242)
    assert len(frags) == 2
    first = dpkt.ip.IP(frags[0])
    assert first.mf and first.offset == 0 and len(first.data) % 8 == 0
    last = dpkt.ip.IP(frags[1])
    assert not last.mf and last.offset * 8 == len(first.data)
    assert bytes(first.data) + bytes(last.data) == datagram
    assert all(ones_sum_is_ffff(f[:20]) for f in frags)


# ---------------------------------------------------------------------------
# DNS, TLS, HTTP builders
# ---------------------------------------------------------------------------


def test_dns_response_compresses_names_and_parses() -> None:
    answers = [("login.microsoftonline.com", 5, 300, "login.mso.msidentity.com"),
               ("login.mso.msidentity.com", 5, 300, "ak.privatelink.msidentity.com"),
               ("ak.privatelink.msidentity.com", 1, 300, "20.190.159.2")]
    raw = b.dns_response(0xBEEF, "login.microsoftonline.com", 1, answers)
    msg = dpkt.dns.DNS(raw)
    assert msg.id == 0xBEEF and msg.qr == 1 and msg.qd[0].name == "login.microsoftonline.com"
    assert [(rr.name, rr.type) for rr in msg.an] == [(a[0], a[1]) for a in answers]
    assert msg.an[0].cname == "login.mso.msidentity.com"
    assert msg.an[2].ip == b.ip_bytes("20.190.159.2")
    assert raw.count(b"\xc0") >= 4  # owner names point back to earlier names
    assert b"msidentity" in raw and raw.count(b"msidentity") == 1  # written once


def test_dns_query_has_edns_and_recursion_desired() -> None:
    from scapy.layers.dns import DNS

    q = DNS(b.dns_query(7, "chatgpt.com", 65))
    assert q.rd == 1 and q.qd[0].qname == b"chatgpt.com." and q.qd[0].qtype == 65 and q.arcount == 1


def _hello_exts(record: bytes) -> dict[int, bytes]:
    """Extensions of a ClientHello record, by type (the last one of a type wins)."""
    hs = record[5:]
    at = 4 + 2 + 32
    at += 1 + hs[at]
    at += 2 + int.from_bytes(hs[at:at + 2], "big")
    at += 1 + hs[at]
    end = at + 2 + int.from_bytes(hs[at:at + 2], "big")
    at += 2
    out = {}
    while at < end:
        t, n = struct.unpack_from("!HH", hs, at)
        out[t] = hs[at + 4:at + 4 + n]
        at += 4 + n
    assert at == end
    return out


@pytest.mark.parametrize("profile", b.TLS_PROFILES)
def test_client_hello_profiles_parse_with_scapy_and_carry_the_sni(profile: str) -> None:
    from scapy.layers.tls.all import TLS
    from scapy.layers.tls.extensions import TLS_Ext_ServerName

    record = b.client_hello_record(b.client_hello(profile, random.Random(1), "chatgpt.com"))
    msg = TLS(record).msg[0]
    assert type(msg).__name__ == "TLSClientHello"
    sni = [e for e in msg.ext if isinstance(e, TLS_Ext_ServerName)]
    assert sni[0].servernames[0].servername == b"chatgpt.com"


def test_chrome_hello_has_grease_and_a_1216_byte_mlkem_share_spanning_two_segments() -> None:
    record = b.client_hello_record(b.client_hello("chrome", random.Random(2), "claude.ai"))
    assert 1700 < len(record) < 2000 and len(record) > 1460
    exts = _hello_exts(record)
    assert any(t in b.GREASE for t in exts)
    assert b.EXT_ECH in exts  # GREASE ECH
    assert struct.pack("!HH", b.X25519MLKEM768, 1216) in exts[b.EXT_KEY_SHARE]


def test_firefox_and_openssl_hellos_fit_one_segment_and_python_offers_only_http11() -> None:
    for profile in ("firefox", "curl", "python"):
        assert len(b.client_hello_record(b.client_hello(profile, random.Random(3), "api.openai.com"))) < 1460
    exts = _hello_exts(b.client_hello_record(b.client_hello("python", random.Random(3), "api.openai.com")))
    assert exts[b.EXT_ALPN] == b"\x00\x09\x08http/1.1"


def test_ech_hello_has_outer_public_name_and_no_inner_name() -> None:
    record = b.client_hello_record(b.client_hello("chrome", random.Random(4), w.ECH_PUBLIC_NAME, ech=True))
    exts = _hello_exts(record)
    assert w.ECH_PUBLIC_NAME.encode() in exts[b.EXT_SNI]
    assert exts[b.EXT_ECH][0] == 0  # outer
    assert b"chatgpt" not in record


def test_hello_without_sni_has_no_server_name_extension() -> None:
    assert b.EXT_SNI not in _hello_exts(b.client_hello_record(b.client_hello("chrome", random.Random(5), None)))


def test_connect_and_http_request_heads() -> None:
    req = b.http_connect("claude.ai")
    assert req.startswith(b"CONNECT claude.ai:443 HTTP/1.1\r\nHost: claude.ai:443\r\n") and req.endswith(b"\r\n\r\n")
    parsed = dpkt.http.Request(b.http_request("GET", "/x", "www.deepl.com"))
    assert parsed.headers["host"] == "www.deepl.com" and parsed.uri == "/x"


# ---------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------


def _ip_len(frame: bytes) -> int:
    eth = dpkt.ethernet.Ethernet(frame)
    return len(eth.data)


def test_tcp_conversation_is_ordered_and_counts_ip_bytes_each_way() -> None:
    rng = random.Random(6)
    conv = TcpConversation(WirePath(A, S), 51000, 443, t0=1000.0, rtt=0.02, rng=rng)
    pkts = list(conv.handshake()) + list(conv.send(True, 30_000)) + list(conv.send(False, 200_000)) + list(conv.close())
    ts = [p[0] for p in pkts]
    assert ts == sorted(ts)
    up = sum(_ip_len(f) for _, f, _ in pkts if f[26:30] == A)
    down = sum(_ip_len(f) for _, f, _ in pkts if f[26:30] == S)
    assert (up, down, len(pkts)) == (conv.bytes_up, conv.bytes_down, conv.packets)
    stream = b"".join(bytes(dpkt.ethernet.Ethernet(f).data.data.data) for _, f, _ in pkts if f[26:30] == S)
    assert len(stream) == 200_000 and stream[0] == 0x17  # TLS application data records
    at = 0
    while at < len(stream) - 5:  # the records tile the stream exactly
        assert stream[at:at + 3] == b"\x17\x03\x03"
        at += 5 + int.from_bytes(stream[at + 3:at + 5], "big")


def test_tcp_segment_plan_sends_out_of_order_retransmitted_and_overlapping_bytes() -> None:
    rng = random.Random(7)
    conv = TcpConversation(WirePath(A, S), 51000, 443, t0=1000.0, rtt=0.02, rng=rng)
    data = bytes(range(256)) * 8
    list(conv.handshake())
    base = conv.seq[0]
    pkts = list(conv.send(True, data, chunks=[(600, 600), (0, 600), (600, 600), (1000, len(data) - 1000)]))
    segs = [dpkt.ethernet.Ethernet(f).data.data for _, f, _ in pkts if f[26:30] == A]
    assert [(s.seq - base, len(s.data)) for s in segs] == [(600, 600), (0, 600), (600, 600), (1000, len(data) - 1000)]
    for s in segs:
        assert bytes(s.data) == data[s.seq - base:s.seq - base + len(s.data)]


def _open_initials(datagram: bytes, key_dcid: bytes, version: int) -> list[bytes]:
    """Decrypt every client Initial in a datagram with the generator-independent primitives."""
    out = []
    at = 0
    while at < len(datagram) and datagram[at] & 0x80:
        first = datagram[at]
        ver = int.from_bytes(datagram[at + 1:at + 5], "big")
        ptype = (first >> 4) & 3
        i = at + 5
        dl = datagram[i]
        i += 1 + dl
        sl = datagram[i]
        i += 1 + sl
        is_initial = ptype == quic_crypto.initial_type_bits(version)
        if is_initial:
            tl, i = _varint(datagram, i)
            i += tl
        length, i = _varint(datagram, i)
        if is_initial:
            keys = quic_crypto.initial_keys(ver, key_dcid, True)
            pkt = datagram[at:i + length]
            header, pn, _pn_len = quic_crypto.remove_header_protection(pkt, i - at, keys.hp)
            plain = quic_crypto.aead_open(keys, pn, header, pkt[len(header):])
            assert plain is not None
            out.append(plain)
        at = i + length
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = 1 << (buf[i] >> 6)
    return int.from_bytes(buf[i:i + n], "big") & ((1 << (8 * n - 2)) - 1), i + n


def _frames(plain: bytes) -> list[tuple[str, int, bytes]]:
    out = []
    i = 0
    while i < len(plain):
        t = plain[i]
        if t == 0:
            j = i
            while j < len(plain) and plain[j] == 0:
                j += 1
            out.append(("padding", j - i, b""))
            i = j
        elif t == 1:
            out.append(("ping", 1, b""))
            i += 1
        elif t == 2:
            i += 1
            for _ in range(4):
                _, i = _varint(plain, i)
            out.append(("ack", 0, b""))
        elif t == 6:
            off, i = _varint(plain, i + 1)
            n, i = _varint(plain, i)
            out.append(("crypto", off, plain[i:i + n]))
            i += n
        else:
            raise AssertionError(f"unexpected frame {t}")
    return out


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2, DRAFT_29])
def test_quic_hello_spans_two_initials_in_shuffled_crypto_frames_with_ping_and_padding(version: int) -> None:
    rng = random.Random(version)
    conv = QuicConversation(WirePath(A, S), 52000, version=version, t0=1000.0, rtt=0.02, rng=rng)
    hello = b.client_hello("chrome", rng, "gemini.google.com", quic_params=b.quic_transport_parameters(b"", rng, version))
    pkts = list(conv.handshake(hello))
    client = [dpkt.ethernet.Ethernet(f).data.data.data for _, f, _ in pkts if f[26:30] == A]
    assert all(len(d) >= 1200 for d in client)
    firsts = [_open_initials(bytes(d), conv.dcid, version) for d in client[:2]]
    assert [len(x) for x in firsts] == [1, 1]
    frames = _frames(firsts[0][0]) + _frames(firsts[1][0])
    crypto = sorted((off, data) for kind, off, data in frames if kind == "crypto")
    assert b"".join(d for _, d in crypto) == hello
    assert sum(k == "crypto" for k, _, _ in frames) > 2 and any(k == "ping" for k, _, _ in frames)
    offsets = [off for k, off, _ in _frames(firsts[0][0]) + _frames(firsts[1][0]) if k == "crypto"]
    assert offsets != sorted(offsets) or any(k == "padding" for k, _, _ in _frames(firsts[0][0])[:-1])


def test_quic_0rtt_packet_is_coalesced_after_the_initial() -> None:
    rng = random.Random(8)
    conv = QuicConversation(WirePath(A, S), 52000, t0=1000.0, rtt=0.02, rng=rng)
    hello = b.client_hello("chrome", rng, "chatgpt.com", quic_params=b"", psk=True, pq=False)
    first = dpkt.ethernet.Ethernet(next(iter(conv.handshake(hello, zero_rtt=240)))[1]).data.data.data
    assert len(_open_initials(bytes(first), conv.dcid, VERSION_1)) == 1
    assert (first[-240] >> 4) & 3 == 1 and first[-240] & 0x80  # long header, type 0-RTT


# ---------------------------------------------------------------------------
# Tunnels
# ---------------------------------------------------------------------------


def test_tunnels_carry_the_inner_frame() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    inner = WirePath(A, S).tcp_frame(True, 51000, 443, 1, 2, 0x18, 1026, b"payload")
    assert Ether(tunnels.Vlan(120)(inner)).vlan == 120
    qinq = tunnels.Vlan(200, 120)(inner)
    assert qinq[12:14] == b"\x88\xa8" and qinq[16:18] == b"\x81\x00"
    gre = Ether(tunnels.Gre()(inner))
    assert gre[IP].proto == 47 and bytes(gre[IP].payload)[4:] == inner[14:]
    for cls, offset in ((tunnels.Erspan2, 8 + 8), (tunnels.Erspan3, 8 + 12)):
        outer = Ether(cls()(inner))
        assert bytes(outer[IP].payload)[offset:] == inner
    for cls, port in ((tunnels.Vxlan, 4789), (tunnels.Geneve, 6081)):
        outer = cls()(inner)
        ip = dpkt.ethernet.Ethernet(outer).data
        assert ip.data.dport == port and bytes(ip.data.data)[8:] == inner
        assert Ether(inner)[TCP].load == b"payload"


# ---------------------------------------------------------------------------
# The office scenario
# ---------------------------------------------------------------------------


def _small_office(buf: io.BytesIO, truth: Path | None = None, **kw: object) -> object:
    args: dict[str, object] = {"clients": 12, "duration_s": 40.0, "seed": 5, "flows_per_client_per_minute": 2.0,
                               "large_upload_bytes": 300_000, "max_flow_bytes": 300_000}
    args.update(kw)
    return generate_office(buf, truth=truth, **args)


def test_office_is_byte_identical_for_the_same_seed_and_differs_for_another(tmp_path: Path) -> None:
    first, second, other = io.BytesIO(), io.BytesIO(), io.BytesIO()
    _small_office(first, tmp_path / "a.json")
    _small_office(second, tmp_path / "b.json")
    _small_office(other, seed=6)
    assert first.getvalue() == second.getvalue()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert first.getvalue() != other.getvalue()


def test_office_timestamps_are_monotonic_and_truth_bytes_match_the_capture(tmp_path: Path) -> None:
    buf = io.BytesIO()
    summary = _small_office(buf, tmp_path / "t.json")
    truth = json.loads((tmp_path / "t.json").read_text())
    ts_list = [ts for ts, _ in dpkt.pcap.Reader(io.BytesIO(buf.getvalue()))]
    assert ts_list == sorted(ts_list) and len(ts_list) == summary.packets  # type: ignore[attr-defined]
    # Sum the capture's IP bytes per (client, client port, server, server port) and compare.
    per_flow: dict[tuple[str, int, str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for _, frame in dpkt.pcap.Reader(io.BytesIO(buf.getvalue())):
        ip = dpkt.ethernet.Ethernet(frame).data
        l4 = ip.data
        src, dst = b.ip_text(ip.src), b.ip_text(ip.dst)
        size = len(ip)
        per_flow[(src, l4.sport, dst, l4.dport)][0] += size
        per_flow[(dst, l4.dport, src, l4.sport)][1] += size
        per_flow[(src, l4.sport, dst, l4.dport)][2] += 1
        per_flow[(dst, l4.dport, src, l4.sport)][2] += 1
    assert truth["records"]
    for rec in truth["records"]:
        up, down, pkts = per_flow[(rec["client"], rec["client_port"], rec["server_ip"], rec["server_port"])]
        if rec["kind"] != "dns":
            assert (up, down, pkts) == (rec["bytes_up"], rec["bytes_down"], rec["packets"]), rec
        assert rec["department"] and rec["ts"].endswith("Z")


def test_office_contains_every_special_case_and_every_ai_service(tmp_path: Path) -> None:
    _small_office(io.BytesIO(), tmp_path / "t.json")
    recs = json.loads((tmp_path / "t.json").read_text())["records"]
    tags = {t for r in recs for t in r["tags"]}
    assert {"large-upload", "ech", "doh", "dot", "proxy", "quic-v2", "quic-draft-29", "ipv6", "no-sni",
            "plain-http"} <= tags
    services = {r["service"] for r in recs if r["kind"] == "flow"}
    assert {s.service for s in w.AI + w.DEVELOPER_AI} <= services
    ech = [r for r in recs if "ech" in r["tags"] and r["kind"] == "flow" and r["service"]]
    assert ech and all(r["sni"] == w.ECH_PUBLIC_NAME and r["evidence"] == "dns-cache" for r in ech)
    assert any(":" in r["client"] for r in recs if "ipv6" in r["tags"] and r["kind"] == "flow")
    evidence = {r["evidence"] for r in recs}
    assert {"dns", "tls-sni", "quic-sni", "http-connect", "http-host", "dns-cache"} <= evidence


def test_snap_bulk_cuts_opaque_payload_but_keeps_original_lengths_and_handshakes() -> None:
    buf = io.BytesIO()
    _small_office(buf, snap_bulk=0)
    cut = whole = 0
    raw = buf.getvalue()
    at = 24
    while at < len(raw):
        _, _, incl, orig = struct.unpack_from("<IIII", raw, at)
        frame = raw[at + 16:at + 16 + incl]
        if incl < orig:
            cut += 1
            ip_len = int.from_bytes(frame[16:18], "big") if frame[12:14] == b"\x08\x00" else (
                40 + int.from_bytes(frame[18:20], "big"))
            assert ip_len + 14 == orig  # the IP header still tells the full size
        else:
            whole += 1
        at += 16 + incl
    assert cut > 100 and whole > 100


def test_max_packets_stops_early() -> None:
    assert _small_office(io.BytesIO(), max_packets=500).packets == 500  # type: ignore[attr-defined]


def test_client_subnets_match_the_example_policy() -> None:
    yaml = pytest.importorskip("yaml")
    policy_file = ROOT / "rules" / "policy.example.yaml"
    if not policy_file.exists():
        pytest.skip("rules/policy.example.yaml is absent")
    depts = yaml.safe_load(policy_file.read_text())["departments"]
    nets = [(ipaddress.ip_network(n), name) for name, subnets in depts.items() for n in subnets]

    def department(addr: str) -> str:
        ip = ipaddress.ip_address(addr)
        hits = [(n.prefixlen, name) for n, name in nets if ip.version == n.version and ip in n]
        return max(hits)[1] if hits else "unknown"

    for i, (name, _, _, v6) in enumerate(w.DEPARTMENTS):
        for n in (0, 239, 240, 1999):
            v4addr, v6addr = w.department_client(i, n)
            assert department(v4addr) == name, (name, v4addr)
            if v6:
                assert department(v6addr) == name, (name, v6addr)


def _catalogue() -> dict[str, list[str]]:
    yaml = pytest.importorskip("yaml")
    files = sorted((ROOT / "rules" / "catalogue").glob("*.yaml"))
    if not files:
        pytest.skip("rules/catalogue is absent")
    out: dict[str, list[str]] = {}
    for f in files:
        for svc in yaml.safe_load(f.read_text()).get("services", []):
            out[svc["id"]] = [d["pattern"] if isinstance(d, dict) else d for d in svc.get("domains", [])]
    return out


def _matches(host: str, pattern: str) -> bool:
    if pattern.startswith("full:"):
        return host == pattern[5:]
    if pattern.startswith("regexp:"):
        return re.search(pattern[7:], host) is not None
    return host == pattern or host.endswith("." + pattern)


def test_ai_hosts_belong_to_their_catalogue_service_and_ordinary_hosts_to_none() -> None:
    cat = _catalogue()
    for site in w.SITES_BY_HOST.values():
        hits = {sid for sid, pats in cat.items() if any(_matches(site.host, p) for p in pats)}
        if site.service in w.ENCRYPTED_DNS:
            continue
        assert hits == ({site.service} if site.service else set()), (site.host, hits)
    assert not any(_matches(w.ECH_PUBLIC_NAME, p) for pats in cat.values() for p in pats)


# ---------------------------------------------------------------------------
# The bundled sample and the golden traces
# ---------------------------------------------------------------------------


def test_bundled_sample_is_current_and_small(tmp_path: Path) -> None:
    if not SAMPLE.exists():
        pytest.skip("samples/office-sample.pcap is absent")
    generate_sample(tmp_path / "s.pcap", tmp_path / "s.truth.json")
    assert (tmp_path / "s.pcap").read_bytes() == SAMPLE.read_bytes(), "run: python -m detector.synth sample"
    assert (tmp_path / "s.truth.json").read_bytes() == SAMPLE_TRUTH.read_bytes()
    assert SAMPLE.stat().st_size < 3_000_000
    truth = json.loads(SAMPLE_TRUTH.read_text())
    assert truth["params"]["seed"] == SAMPLE_PARAMS["seed"] and len(truth["services"]) >= 12
    big = [r for r in truth["records"] if "large-upload" in r["tags"] and r["kind"] == "flow"]
    assert big and big[0]["bytes_up"] > 25_000_000 and big[0]["department"] == "Sociaal Domein"


def test_golden_traces_regenerate_byte_identical(tmp_path: Path) -> None:
    golden.write_golden(tmp_path / "a")
    golden.write_golden(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == len(golden.TRACES) + 2
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        if GOLDEN.exists():
            committed = GOLDEN / name
            assert committed.exists() and committed.read_bytes() == (tmp_path / "a" / name).read_bytes(), (
                f"{name} is stale: run python -m detector.synth golden tests/golden/traces")


def _tshark(path: Path, *fields: str) -> list[list[str]]:
    args = [TSHARK or "tshark", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.splitlines()]


NAME_FIELDS = ("tls.handshake.extensions_server_name", "dns.qry.name", "http.host", "http.request.uri")


@needs_tshark
def test_tshark_sees_every_name_the_sample_truth_lists() -> None:
    if not SAMPLE.exists():
        pytest.skip("samples/office-sample.pcap is absent")
    rows = _tshark(SAMPLE, "ip.src", "ipv6.src", "tcp.srcport", "udp.srcport", *NAME_FIELDS)
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for src4, src6, tport, uport, sni, qname, host, _uri in rows:
        src = src4.split(",")[-1] or src6.split(",")[-1]
        port = int((tport or uport or "0").split(",")[-1])
        for value in (sni, qname, host):
            for name in value.split(","):
                if name:
                    seen[(src, port)].add(name.rsplit(":", 1)[0] if name.endswith(":443") else name)
    truth = json.loads(SAMPLE_TRUTH.read_text())["records"]
    for rec in truth:
        names = seen[(rec["client"], rec["client_port"])]
        if rec["kind"] == "dns" or rec["evidence"] in ("http-host", "http-connect"):
            assert rec["name"] in names, rec
        if rec.get("sni"):
            assert rec["sni"] in names, rec
        if rec.get("sni") is None and rec["kind"] != "dns" and rec["evidence"] == "dns-cache":
            assert not names, rec  # a nameless flow really is nameless on the wire


def _golden_trace_problems(t: golden.Trace) -> list[str]:
    rows = _tshark(GOLDEN / t.filename, *NAME_FIELDS, "_ws.malformed")
    names = {n.rsplit(":", 1)[0] for r in rows for v in r[:3] for n in v.split(",") if n}
    problems = [f"{t.filename}: tshark found malformed packets"] if any(r[4] for r in rows) else []
    for e in t.expect:
        if e["evidence"] in ("tls-sni", "quic-sni", "dns", "http-host", "http-connect") and e["name"] not in names:
            problems.append(f"{t.filename}: {e['name']} not among {sorted(names)}")
    if "ech" in t.name and w.ECH_PUBLIC_NAME not in names:
        problems.append(f"{t.filename}: no outer SNI {w.ECH_PUBLIC_NAME}")
    return problems


@needs_tshark
def test_tshark_sees_the_names_of_every_golden_trace() -> None:
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} is absent")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # tshark start-up dominates; run several at once
        problems = [p for ps in pool.map(_golden_trace_problems, golden.TRACES) for p in ps]
    assert not problems, "\n".join(problems)
