"""Pure byte builders for synthetic traffic: link, IP, TCP/UDP, DNS, TLS and HTTP messages.

Every function here is a pure function of its arguments (randomness comes in as a
`random.Random`), returns `bytes`, and is fast enough to build millions of packets:
headers are packed with `struct`, checksums use one big-integer reduction instead of a
Python loop over 16-bit words.

References:
  RFC 1071 (Internet checksum), RFC 791 (IPv4, §3.1 header, §3.2 fragmentation),
  RFC 8200 §4 (IPv6 extension headers), §8.1 (upper-layer checksum pseudo-header),
  RFC 9293 §3.1 (TCP header), RFC 768 (UDP), IEEE 802.3 / 802.1Q (Ethernet, VLAN tags),
  RFC 1035 §4.1 (DNS message, §4.1.4 name compression), RFC 7766 §8 (DNS over TCP framing),
  RFC 9460 §2.2 (HTTPS resource record), RFC 8446 §4.1.2-4.1.3 (ClientHello, ServerHello),
  §5.1 (record layer), RFC 8701 (GREASE), RFC 7301 (ALPN), RFC 6066 §3 (server_name),
  RFC 8879 (certificate compression), draft-ietf-tls-esni-22 §5 (ECH outer extension),
  draft-kwiatkowski-tls-ecdhe-mlkem-03 (X25519MLKEM768 = 0x11ec; 1216-byte client share,
  1120-byte server share), RFC 9000 §18 (QUIC transport parameters),
  RFC 9112 §3 (HTTP/1.1 request line), RFC 9110 §9.3.6 (CONNECT).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------------------
# Checksums and addresses
# ---------------------------------------------------------------------------

TCP_PROTO = 6
UDP_PROTO = 17
GRE_PROTO = 47
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def word_sum(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of `data` modulo 0xFFFF (odd length: zero-padded).

    Why the modulo works: 2**16 == 1 (mod 0xFFFF), so the big-endian integer of the data
    is congruent to the sum of its words; one C-level reduction replaces a Python loop.
    Sums of pieces add up; a piece that starts at an odd offset counts times 256.
    """
    n = int.from_bytes(data, "big")
    return (n << 8 if len(data) & 1 else n) % 0xFFFF


def fold(total: int) -> int:
    """RFC 1071 checksum field from a word sum: its one's complement. A sum congruent to 0
    is 0xFFFF for any data that is not all zeros, so the field is 0 (udp() writes 0xFFFF,
    RFC 768: 0 there means "no checksum")."""
    s = total % 0xFFFF
    return 0xFFFF - s if s else 0


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of `data` (odd lengths padded with a zero byte)."""
    return fold(word_sum(data))


def ip_bytes(addr: str) -> bytes:
    """Text address (v4 or v6) to packed bytes."""
    return ipaddress.ip_address(addr).packed


def ip_text(packed: bytes) -> str:
    """Packed address (4 or 16 bytes) to text."""
    return str(ipaddress.ip_address(packed))


def mac_bytes(mac: str) -> bytes:
    """'02:00:00:aa:bb:cc' to 6 bytes."""
    return bytes.fromhex(mac.replace(":", ""))


# ---------------------------------------------------------------------------
# Link layer
# ---------------------------------------------------------------------------


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet II frame without FCS (as capture tools record it)."""
    return dst + src + ethertype.to_bytes(2, "big") + payload


def vlan_tag(vid: int, ethertype: int, *, pcp: int = 0, tpid: int = ETH_VLAN) -> bytes:
    """One 802.1Q/802.1ad tag (TPID + TCI) followed by the next ethertype."""
    return struct.pack("!HHH", tpid, (pcp << 13) | (vid & 0x0FFF), ethertype)


def linux_sll(packet_type: int, mac: bytes, protocol: int, payload: bytes) -> bytes:
    """A Linux cooked-capture v1 (LINKTYPE_LINUX_SLL = 113) frame; packet_type 0 = to us, 4 = outgoing."""
    return struct.pack("!HHH", packet_type, 1, len(mac)) + mac.ljust(8, b"\0") + protocol.to_bytes(2, "big") + payload


# ---------------------------------------------------------------------------
# IP
# ---------------------------------------------------------------------------


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64,
         df: bool = True, tos: int = 0, frag: int = 0) -> bytes:
    """An IPv4 packet (20-byte header, checksum filled). `frag`: raw flags+offset field, overrides df."""
    field = frag if frag else (0x4000 if df else 0)
    total = 20 + len(payload)
    ident &= 0xFFFF
    words = 0x4500 + tos + total + ident + field + (ttl << 8) + proto + int.from_bytes(src + dst, "big")
    return _IPV4.pack(0x45, tos, total, ident, field, ttl, proto, fold(words), src, dst) + payload


def ipv4_fragments(src: bytes, dst: bytes, proto: int, payload: bytes, *, mtu: int, ident: int,
                   ttl: int = 64) -> list[bytes]:
    """Fragment one IPv4 datagram (RFC 791 §3.2): every fragment but the last carries a multiple of 8 bytes."""
    step = (mtu - 20) // 8 * 8
    out = []
    for off in range(0, len(payload), step):
        more = off + step < len(payload)
        field = (0x2000 if more else 0) | (off // 8)
        out.append(ipv4(src, dst, proto, payload[off:off + step], ident=ident, ttl=ttl, frag=field))
    return out


def ipv6_options_header(next_header: int, options: bytes) -> bytes:
    """A Hop-by-Hop or Destination Options header (RFC 8200 §4.3/§4.6), padded with PadN to 8 bytes."""
    body_len = 2 + len(options)
    pad = -body_len % 8
    if pad == 1:
        options += b"\x00"  # Pad1
    elif pad:
        options += bytes((1, pad - 2)) + bytes(pad - 2)  # PadN
    return bytes((next_header, (body_len + pad) // 8 - 1)) + options


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, *, hop_limit: int = 64,
         flow_label: int = 0, ext: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """An IPv6 packet. `ext`: extension headers in order as (header type, options bytes);
    each is built with ipv6_options_header so the Next Header chain ends at `next_header`."""
    chain = b""
    for i in range(len(ext) - 1, -1, -1):
        after = ext[i + 1][0] if i + 1 < len(ext) else next_header
        chain = ipv6_options_header(after, ext[i][1]) + chain
    first = ext[0][0] if ext else next_header
    body = chain + payload
    return _IPV6.pack(0x60000000 | (flow_label & 0xFFFFF), len(body), first, hop_limit, src, dst) + body


# ---------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------

# Windows 10/11 SYN options: MSS 1460, NOP, WS 8, NOP, NOP, SACK permitted (12 bytes).
SYN_OPTIONS = bytes.fromhex("020405b4" "01" "030308" "0101" "0402")
# A typical server SYN-ACK: MSS 1460, NOP, NOP, SACK permitted, NOP, WS 7.
SYNACK_OPTIONS = bytes.fromhex("020405b4" "0101" "0402" "01" "030307")


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
        payload: bytes = b"", *, window: int = 1024, options: bytes = b"", psum: int | None = None) -> bytes:
    """A TCP segment with its checksum over the v4/v6 pseudo-header (src/dst decide the family).
    psum: word_sum(payload) when the caller already knows it (bulk data from a summed pool)."""
    off = (20 + len(options)) // 4
    hdr = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags, window, 0, 0) + options
    length = len(hdr) + len(payload)
    # Pseudo-header words: the addresses, the protocol, the length (RFC 9293 §3.1, RFC 8200 §8.1).
    total = int.from_bytes(src + dst + hdr, "big") + TCP_PROTO + length
    total += word_sum(payload) if psum is None else psum
    return hdr[:16] + fold(total).to_bytes(2, "big") + hdr[18:] + payload


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, *, psum: int | None = None) -> bytes:
    """A UDP datagram with its checksum over the v4/v6 pseudo-header (psum as for tcp)."""
    length = 8 + len(payload)
    total = int.from_bytes(src + dst, "big") + UDP_PROTO + 2 * length + sport + dport
    total += word_sum(payload) if psum is None else psum
    return _UDP.pack(sport, dport, length, fold(total) or 0xFFFF) + payload


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------

QTYPE = {"A": 1, "NS": 2, "CNAME": 5, "AAAA": 28, "HTTPS": 65}


class _NameWriter:
    """Writes domain names with RFC 1035 §4.1.4 compression pointers to earlier suffixes."""

    __slots__ = ("buf", "seen")

    def __init__(self, header: bytes) -> None:
        self.buf = bytearray(header)
        self.seen: dict[str, int] = {}

    def name(self, name: str) -> None:
        labels = [lab for lab in name.rstrip(".").split(".") if lab]
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            at = self.seen.get(suffix)
            if at is not None:
                self.buf += struct.pack("!H", 0xC000 | at)
                return
            if len(self.buf) < 0x3FFF:
                self.seen[suffix] = len(self.buf)
            raw = labels[i].encode("ascii")
            self.buf += bytes((len(raw),)) + raw
        self.buf += b"\0"


def _opt_rr(udp_size: int = 1232) -> bytes:
    # EDNS(0) OPT pseudo-RR (RFC 6891 §6.1.2): root name, type 41, class = UDP payload size.
    return b"\x00" + struct.pack("!HHIH", 41, udp_size, 0, 0)


def dns_query(txid: int, name: str, qtype: int = 1, *, rd: bool = True, edns: bool = True) -> bytes:
    """A DNS query for one name (with an EDNS OPT record, as stub resolvers send today)."""
    w = _NameWriter(struct.pack("!HHHHHH", txid, 0x0100 if rd else 0, 1, 0, 0, 1 if edns else 0))
    w.name(name)
    w.buf += struct.pack("!HH", qtype, 1)
    if edns:
        w.buf += _opt_rr()
    return bytes(w.buf)


def https_rdata(*, alpn: Sequence[str] = ("h3", "h2"), ech: bytes = b"") -> bytes:
    """RFC 9460 HTTPS RR rdata in ServiceMode for the owner name itself (target '.')."""
    params = b""
    alpn_val = b"".join(bytes((len(a),)) + a.encode() for a in alpn)
    params += struct.pack("!HH", 1, len(alpn_val)) + alpn_val
    if ech:
        params += struct.pack("!HH", 5, len(ech)) + ech
    return struct.pack("!H", 1) + b"\x00" + params


def dns_response(txid: int, name: str, qtype: int, answers: Sequence[tuple[str, int, int, str | bytes]],
                 *, rcode: int = 0, edns: bool = True) -> bytes:
    """A recursive resolver's answer. answers: (owner, rtype, ttl, value) where value is an address
    text for A/AAAA, a target name for CNAME (compressed), or raw rdata bytes for other types."""
    flags = 0x8180 | (rcode & 0xF)
    w = _NameWriter(struct.pack("!HHHHHH", txid, flags, 1, len(answers), 0, 1 if edns else 0))
    w.name(name)
    w.buf += struct.pack("!HH", qtype, 1)
    for owner, rtype, ttl, value in answers:
        w.name(owner)
        w.buf += struct.pack("!HHI", rtype, 1, ttl)
        if rtype == QTYPE["CNAME"]:
            at = len(w.buf)
            w.buf += b"\0\0"
            w.name(str(value))
            struct.pack_into("!H", w.buf, at, len(w.buf) - at - 2)
        else:
            rdata = ip_bytes(value) if isinstance(value, str) else value
            w.buf += struct.pack("!H", len(rdata)) + rdata
    if edns:
        w.buf += _opt_rr()
    return bytes(w.buf)


def dns_tcp_frame(message: bytes) -> bytes:
    """RFC 7766 §8: a DNS message on TCP carries a 2-byte length prefix."""
    return len(message).to_bytes(2, "big") + message


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

GREASE = tuple(0x0A0A + 0x1010 * i for i in range(16))  # RFC 8701 §2
X25519MLKEM768 = 0x11EC
X25519 = 0x001D
SECP256R1 = 0x0017
SECP384R1 = 0x0018
MLKEM_CLIENT_SHARE = 1216  # ML-KEM-768 encapsulation key (1184) + X25519 public key (32)
MLKEM_SERVER_SHARE = 1120  # ML-KEM-768 ciphertext (1088) + X25519 public key (32)
EXT_SNI, EXT_ALPN, EXT_KEY_SHARE, EXT_ECH = 0x0000, 0x0010, 0x0033, 0xFE0D
EXT_QUIC_TP = 0x0039
TLS_PROFILES = ("chrome", "firefox", "curl", "python")

_CHROME_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
                   0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
_FIREFOX_CIPHERS = (0x1301, 0x1303, 0x1302, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030,
                    0xC00A, 0xC009, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
_OPENSSL_CIPHERS = (0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA,
                    0xC02B, 0xC02F, 0x009E, 0xC024, 0xC028, 0x006B, 0xC023, 0xC027, 0x0067,
                    0xC00A, 0xC014, 0x0039, 0xC009, 0xC013, 0x0033, 0x009D, 0x009C, 0x003D,
                    0x003C, 0x0035, 0x002F, 0x00FF)
_CHROME_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
_FIREFOX_SIGALGS = (0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
                    0x0203, 0x0201)
_OPENSSL_SIGALGS = (0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x081A, 0x081B, 0x081C, 0x0809,
                    0x080A, 0x080B, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0303,
                    0x0301, 0x0302, 0x0402, 0x0502, 0x0602)


def _u16s(values: Iterable[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def vec8(body: bytes) -> bytes:
    """A TLS opaque vector with a 1-byte length."""
    return bytes((len(body),)) + body


def vec16(body: bytes) -> bytes:
    """A TLS opaque vector with a 2-byte length."""
    return len(body).to_bytes(2, "big") + body


def ext(ext_type: int, body: bytes) -> bytes:
    """One TLS extension: type, length, body."""
    return struct.pack("!HH", ext_type, len(body)) + body


def ext_sni(host: str) -> bytes:
    """server_name (RFC 6066 §3) with one host_name entry."""
    raw = host.encode("ascii")
    return ext(EXT_SNI, vec16(b"\x00" + vec16(raw)))


def ext_alpn(protocols: Sequence[str]) -> bytes:
    """application_layer_protocol_negotiation (RFC 7301 §3.1)."""
    return ext(EXT_ALPN, vec16(b"".join(vec8(p.encode()) for p in protocols)))


def ext_key_share(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """key_share (RFC 8446 §4.2.8) with the given (group, key_exchange) entries."""
    return ext(EXT_KEY_SHARE, vec16(b"".join(struct.pack("!H", g) + vec16(k) for g, k in shares)))


def ext_ech_outer(rng: random.Random, *, payload_len: int | None = None) -> bytes:
    """encrypted_client_hello of type outer (draft-ietf-tls-esni §5): HPKE suite
    (HKDF-SHA256, AES-128-GCM), config id, 32-byte encapsulated key, opaque payload.
    A GREASE ECH extension (RFC 8701 style, sent when no ECHConfig is known) has the same shape."""
    if payload_len is None:
        payload_len = rng.choice((144, 176, 208, 240)) + 16  # Chrome rounds the inner hello to 32
    body = (b"\x00" + struct.pack("!HH", 0x0001, 0x0001) + bytes((rng.randrange(256),))
            + vec16(rng.randbytes(32)) + vec16(rng.randbytes(payload_len)))
    return ext(EXT_ECH, body)


def p256_point(rng: random.Random) -> bytes:
    """A valid uncompressed P-256 public key (RFC 8446 §4.2.8.2) from a seeded private scalar:
    parsers that check the point (scapy) would reject random bytes."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    key = ec.derive_private_key(rng.randrange(1, order), ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def quic_transport_parameters(scid: bytes, rng: random.Random, version: int = 1) -> bytes:
    """Chrome-like QUIC transport parameters (RFC 9000 §18.2), GREASE parameter included."""
    from detector.decode.quic_crypto import encode_varint as v

    def tp(pid: int, value: bytes) -> bytes:
        return v(pid) + v(len(value)) + value

    params = [
        tp(0x01, v(30000)),  # max_idle_timeout
        tp(0x03, v(1472)),  # max_udp_payload_size
        tp(0x04, v(15728640)),  # initial_max_data
        tp(0x05, v(6291456)),  # initial_max_stream_data_bidi_local
        tp(0x06, v(6291456)),  # initial_max_stream_data_bidi_remote
        tp(0x07, v(6291456)),  # initial_max_stream_data_uni
        tp(0x08, v(100)),  # initial_max_streams_bidi
        tp(0x09, v(103)),  # initial_max_streams_uni
        tp(0x0F, scid),  # initial_source_connection_id
        tp(0x20, v(65536)),  # max_datagram_frame_size
        tp(27 + 31 * rng.randrange(1, 1000), rng.randbytes(rng.randrange(1, 16))),  # GREASE (§18.1)
        tp(0x11, struct.pack("!II", version, version)),  # version_information (RFC 9368 §3)
    ]
    return b"".join(params)


def client_hello(profile: str, rng: random.Random, sni: str | None, *,
                 alpn: Sequence[str] | None = None, quic_params: bytes | None = None,
                 ech: bool | None = None, pq: bool | None = None, psk: bool = False) -> bytes:
    """A TLS 1.3 ClientHello handshake message (type 1 + 24-bit length + body) like `profile` sends.

    profile: "chrome" (GREASE, permuted extensions, X25519MLKEM768 share of 1216 bytes so the
    hello is ~1.8 kB, GREASE or real ECH), "firefox" (fixed order, X25519 + P-256 shares),
    "curl" / "python" (OpenSSL 3 defaults; python's SDKs offer only http/1.1).
    sni: host for server_name, or None for a hello without it (IP-only clients).
    quic_params: QUIC transport parameters; makes a QUIC-style hello (TLS 1.3 only, no
    legacy extensions, ALPN h3). ech: add an encrypted_client_hello outer extension (Chrome
    and Firefox default True: they send GREASE ECH when no real config is known; for real
    ECH pass the public name, e.g. cloudflare-ech.com, as sni). pq: offer X25519MLKEM768
    (Chrome default True). psk: add early_data + pre_shared_key (resumption with 0-RTT).
    """
    if profile not in TLS_PROFILES:
        raise ValueError(f"unknown TLS profile {profile!r}")
    quic = quic_params is not None
    browser = profile in ("chrome", "firefox")
    if alpn is None:
        alpn = ("h3",) if quic else {"python": ("http/1.1",)}.get(profile, ("h2", "http/1.1"))
    if ech is None:
        ech = browser
    if pq is None:
        pq = profile == "chrome"
    x25519 = rng.randbytes(32)
    grease = rng.sample(GREASE, 5)  # cipher, 2 extensions, group, version: each its own value
    exts: list[bytes] = []
    if sni:
        exts.append(ext_sni(sni))
    if profile == "chrome":
        ciphers = (grease[0],) + _CHROME_CIPHERS if not quic else (0x1301, 0x1302, 0x1303)
        groups = ((grease[2],) if not quic else ()) + ((X25519MLKEM768,) if pq else ()) + (X25519, SECP256R1, SECP384R1)
        shares = [] if quic else [(grease[2], b"\x00")]
        if pq:
            shares.append((X25519MLKEM768, rng.randbytes(MLKEM_CLIENT_SHARE - 32) + x25519))
        shares.append((X25519, x25519))
        exts += [
            ext(0x000A, vec16(_u16s(groups))),  # supported_groups
            ext_alpn(alpn),
            ext(0x000D, vec16(_u16s(_CHROME_SIGALGS))),  # signature_algorithms
            ext_key_share(shares),
            ext(0x002D, vec8(b"\x01")),  # psk_key_exchange_modes: psk_dhe_ke
            ext(0x002B, vec8(_u16s(((grease[3],) if not quic else ()) + ((0x0304,) if quic else (0x0304, 0x0303))))),
            ext(0x001B, vec8(_u16s((0x0002,)))),  # compress_certificate: brotli
            ext(0x44CD, vec16(vec8(alpn[0].encode()))),  # application_settings (ALPS)
        ]
        if not quic:
            exts += [
                ext(0x0017, b""),  # extended_master_secret
                ext(0xFF01, b"\x00"),  # renegotiation_info
                ext(0x000B, vec8(b"\x00")),  # ec_point_formats
                ext(0x0023, b""),  # session_ticket
                ext(0x0005, b"\x01\x00\x00\x00\x00"),  # status_request (OCSP)
                ext(0x0012, b""),  # signed_certificate_timestamp
            ]
        if ech:
            exts.append(ext_ech_outer(rng))
        if quic:
            exts.append(ext(EXT_QUIC_TP, quic_params or b""))
        rng.shuffle(exts)  # Chrome >= 110 permutes its extensions on every connection
        exts.insert(0, ext(grease[1], b""))
        exts.append(ext(grease[4], b"\x00"))
    elif profile == "firefox":
        ciphers = _FIREFOX_CIPHERS if not quic else (0x1301, 0x1303, 0x1302)
        groups = ((X25519MLKEM768,) if pq else ()) + (X25519, SECP256R1, SECP384R1, 0x0019, 0x0100, 0x0101)
        shares = ([(X25519MLKEM768, rng.randbytes(MLKEM_CLIENT_SHARE - 32) + x25519)] if pq else [])
        shares += [(X25519, x25519), (SECP256R1, p256_point(rng))]
        if not quic:
            exts += [ext(0x0017, b""), ext(0xFF01, b"\x00")]
        exts.append(ext(0x000A, vec16(_u16s(groups))))
        if not quic:
            exts += [ext(0x000B, vec8(b"\x00")), ext(0x0023, b"")]
        exts += [
            ext_alpn(alpn),
            ext(0x0005, b"\x01\x00\x00\x00\x00"),
            ext(0x0022, vec16(_u16s((0x0403, 0x0503, 0x0603, 0x0203)))),  # delegated_credentials
            ext_key_share(shares),
            ext(0x002B, vec8(_u16s((0x0304,) if quic else (0x0304, 0x0303)))),
            ext(0x000D, vec16(_u16s(_FIREFOX_SIGALGS))),
            ext(0x002D, vec8(b"\x01")),
            ext(0x001C, b"\x40\x01"),  # record_size_limit
            ext(0x001B, vec8(_u16s((0x0001, 0x0002, 0x0003)))),  # zlib, brotli, zstd
        ]
        if quic:
            exts.append(ext(EXT_QUIC_TP, quic_params or b""))
        if ech:
            exts.append(ext_ech_outer(rng))
    else:  # OpenSSL 3 defaults (curl, python ssl / httpx / requests)
        ciphers = _OPENSSL_CIPHERS
        exts += [
            ext(0x000B, vec8(b"\x00\x01\x02")),
            ext(0x000A, vec16(_u16s((X25519, SECP256R1, 0x001E, 0x0019, SECP384R1, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104)))),
            ext(0x0023, b""),
            ext_alpn(alpn),
            ext(0x0016, b""),  # encrypt_then_mac
            ext(0x0017, b""),
            ext(0x000D, vec16(_u16s(_OPENSSL_SIGALGS))),
            ext(0x002B, vec8(_u16s((0x0304, 0x0303)))),
            ext(0x002D, vec8(b"\x01")),
            ext_key_share([(X25519, x25519)]),
        ]
    if psk:  # RFC 8446 §4.2.10/§4.2.11: early_data, and pre_shared_key must be the last extension
        identity = rng.randbytes(rng.randrange(96, 200))
        exts.append(ext(0x002A, b""))
        exts.append(ext(0x0029, vec16(vec16(identity) + rng.randbytes(4)) + vec16(vec8(rng.randbytes(32)))))
    session_id = b"" if quic else rng.randbytes(32)
    body = (b"\x03\x03" + rng.randbytes(32) + vec8(session_id) + vec16(_u16s(ciphers)) + b"\x01\x00"
            + vec16(b"".join(exts)))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(rng: random.Random, *, cipher: int = 0x1301, group: int = X25519,
                 session_id: bytes = b"", hrr: bool = False) -> bytes:
    """A TLS 1.3 ServerHello handshake message (supported_versions + key_share)."""
    share = rng.randbytes(MLKEM_SERVER_SHARE if group == X25519MLKEM768 else 32)
    exts = ext(0x002B, b"\x03\x04") + ext(EXT_KEY_SHARE, struct.pack("!H", group) + vec16(share))
    body = b"\x03\x03" + rng.randbytes(32) + vec8(session_id) + struct.pack("!HB", cipher, 0) + vec16(exts)
    return b"\x02" + len(body).to_bytes(3, "big") + body


def tls_record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    """One TLS record (RFC 8446 §5.1); a ClientHello's record says 0x0301 for compatibility."""
    return struct.pack("!BHH", content_type, version, len(body)) + body


def client_hello_record(hello: bytes) -> bytes:
    """The ClientHello in its handshake record, as sent first on a TLS-over-TCP connection."""
    return tls_record(0x16, hello, 0x0301)


def server_first_flight(rng: random.Random, *, group: int = X25519, session_id: bytes = b"",
                        encrypted_len: int = 4000) -> bytes:
    """ServerHello + ChangeCipherSpec + one opaque record standing for EncryptedExtensions,
    Certificate, CertificateVerify and Finished (TLS 1.3 encrypts them)."""
    return (tls_record(0x16, server_hello(rng, group=group, session_id=session_id))
            + tls_record(0x14, b"\x01")
            + tls_record(0x17, rng.randbytes(encrypted_len)))


def hello_session_id(hello: bytes) -> bytes:
    """The legacy_session_id of a ClientHello message built by client_hello (for the ServerHello echo)."""
    n = hello[38]
    return hello[39:39 + n]


def hello_offers_mlkem(hello: bytes) -> bool:
    """Whether a ClientHello offers an X25519MLKEM768 key share (decides the server's group)."""
    return struct.pack("!HH", X25519MLKEM768, MLKEM_CLIENT_SHARE) in hello


# ---------------------------------------------------------------------------
# HTTP/1.1
# ---------------------------------------------------------------------------

UA_CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/142.0.0.0 Safari/537.36")
UA_EDGE = UA_CHROME + " Edg/142.0.0.0"
UA_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:145.0) Gecko/20100101 Firefox/145.0"


def http_request(method: str, target: str, host: str, *, user_agent: str | None = UA_CHROME,
                 headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """An HTTP/1.1 request head (+ body) with Host first, as browsers and proxies expect."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def http_connect(host: str, port: int = 443, *, user_agent: str | None = UA_CHROME) -> bytes:
    """A proxy CONNECT request (RFC 9110 §9.3.6) as Chrome sends it to an explicit proxy."""
    return http_request("CONNECT", f"{host}:{port}", f"{host}:{port}", user_agent=user_agent,
                        headers=(("Proxy-Connection", "keep-alive"),))


def http_response(status: int, reason: str, body_len: int, *, content_type: str = "text/html",
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """An HTTP/1.1 response head announcing a body of body_len bytes (body sent separately)."""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {body_len}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
