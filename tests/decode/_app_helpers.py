"""Test helpers for the application-layer decoders (dns, tls, http).

- `unhex`: annotated hex literals (comments after `#`, any spacing) to bytes.
- `mutations`: a hypothesis strategy of byte flips and truncations of a valid message.
- `check_result`: the decoder contract (record | NeedMore | named Anomaly | None).
- `segments` / `tcp_streams`: TCP/UDP payloads from the shared real captures,
  without the project's own link decoder (see below).

The captures hold every encapsulation (VLAN, GRE, ERSPAN, VXLAN, Geneve, Teredo,
SLL, IP-in-IP, ...). Instead of decoding each, this scans the first bytes of every
frame for an IPv4 header with a valid (or offloaded) checksum or an IPv6 header whose lengths agree
with the UDP/TCP header after it, and yields each TCP/UDP segment found. That is
enough to feed the application-layer decoders in differential and golden tests; it
is not how the sensor decodes frames.
"""

from __future__ import annotations

import json
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import dpkt
import pytest
from hypothesis import strategies as st

from detector.model import Anomaly, NeedMore

CAPTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "captures"
GROUND_TRUTH = CAPTURES / "GROUND_TRUTH.json"


def unhex(text: str) -> bytes:
    """Bytes from hex digits, ignoring whitespace and `# comments` to the end of each line."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def check_result(result: object, record_type: type, anomalies: dict[str, str]) -> None:
    """Assert `result` honours the decoder contract, with an anomaly name from `anomalies`."""
    assert result is None or isinstance(result, (record_type, NeedMore, Anomaly)), result
    if isinstance(result, Anomaly):
        assert result.kind in anomalies


@st.composite
def mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with up to 8 bytes replaced, then cut at a random length."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def capture_names() -> list[str]:
    """The capture files GROUND_TRUTH.json describes (a placeholder id when absent, so tests skip)."""
    try:
        return sorted(json.loads(GROUND_TRUTH.read_text()))
    except OSError:
        return ["(captures absent)"]


def require_captures() -> dict:
    """GROUND_TRUTH.json as a dict, or skip the test when the shared captures are absent."""
    if not GROUND_TRUTH.is_file():
        pytest.skip(f"shared captures not found at {CAPTURES}")
    return json.loads(GROUND_TRUTH.read_text())

# Tunnel headers end well within this many bytes of the frame start.
_SCAN_BYTES = 220
_IP_START = re.compile(rb"[\x45-\x4f\x60-\x6f]")
_TCP, _UDP = 6, 17

# (proto, src, dst, sport, dport, seq, payload); seq is 0 for UDP.
Segment = tuple[int, bytes, bytes, int, int, int, bytes]


def frames(path: Path) -> Iterator[bytes]:
    """Frame bytes of a pcap or pcapng file."""
    with path.open("rb") as f:
        magic = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        for _ts, buf in reader:
            yield bytes(buf)


def segments(path: Path) -> Iterator[Segment]:
    """Every TCP/UDP segment carried (at any depth) by the frames of `path`."""
    for buf in frames(path):
        for m in _IP_START.finditer(buf, 0, _SCAN_BYTES):
            seg = _ip_at(buf, m.start())
            if seg is not None:
                yield seg


def _ip_at(buf: bytes, off: int) -> Segment | None:
    version = buf[off] >> 4
    if version == 4:
        ihl = (buf[off] & 0x0F) * 4
        if len(buf) < off + ihl + 8:
            return None
        total, frag, proto, csum = struct.unpack_from("!H2xH1xBH", buf, off + 2)
        if frag & 0x3FFF or total < ihl + 8:
            return None  # fragments are reassembled by flows, not here
        # A valid checksum, or one left to the NIC (0, or the packet ends the frame).
        if csum and off + total != len(buf) and _checksum(buf[off : off + ihl]) != 0:
            return None
        # Slicing clamps: a frame cut by the snap length still yields what it holds.
        data = buf[off + ihl : off + total]
        return _l4(proto, buf[off + 12 : off + 16], buf[off + 16 : off + 20], data, total - ihl)
    if len(buf) < off + 48:
        return None
    plen, nxt = struct.unpack_from("!HB", buf, off + 4)
    if plen < 8:
        return None
    return _l4(nxt, buf[off + 8 : off + 24], buf[off + 24 : off + 40], buf[off + 40 : off + 40 + plen], plen)


def _l4(proto: int, src: bytes, dst: bytes, data: bytes, declared: int) -> Segment | None:
    """The segment in `data` (maybe cut short) whose IP header declared `declared` bytes."""
    if proto == _UDP:
        sport, dport, ulen = struct.unpack_from("!HHH", data)
        if ulen != declared:
            return None
        return (proto, src, dst, sport, dport, 0, data[8:])
    if proto == _TCP and len(data) >= 20:
        sport, dport, seq, off = struct.unpack_from("!HHI4xB", data)
        hlen = (off >> 4) * 4
        if hlen < 20 or hlen > len(data):
            return None
        return (proto, src, dst, sport, dport, seq, data[hlen:])
    return None


def _checksum(header: bytes) -> int:
    if len(header) % 2:
        return 1
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total ^ 0xFFFF


def tcp_streams(segs: Iterable[Segment]) -> dict[tuple[bytes, bytes, int, int], bytes]:
    """The contiguous payload of each TCP direction from its lowest sequence number (no wrap handling)."""
    parts: dict[tuple[bytes, bytes, int, int], list[tuple[int, bytes]]] = defaultdict(list)
    for proto, src, dst, sport, dport, seq, payload in segs:
        if proto == _TCP and payload:
            parts[(src, dst, sport, dport)].append((seq, payload))
    streams = {}
    for key, segs in parts.items():
        segs.sort()
        base, data = segs[0][0], bytearray()
        for seq, payload in segs:
            at = seq - base
            if at > len(data):
                break  # a gap: stop where the stream stops being contiguous
            data += payload[len(data) - at :]
        streams[key] = bytes(data)
    return streams


# ---------------------------------------------------------------------------
# TLS ClientHello builder (RFC 8446 §4.1.2 layout; values as Chrome 124+ sends them)
# ---------------------------------------------------------------------------

GREASE_A, GREASE_B = 0x0A0A, 0x8A8A
CHROME_CIPHERS = (
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
    0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)  # fmt: skip
CHROME_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
X25519_MLKEM768 = 0x11EC  # key share of 1216 bytes (ML-KEM-768 1184 + X25519 32)


def ext(etype: int, data: bytes) -> bytes:
    """One extension: type, length, data."""
    return struct.pack("!HH", etype, len(data)) + data


def vec(width: int, data: bytes) -> bytes:
    """`data` with a big-endian length prefix of `width` bytes."""
    return len(data).to_bytes(width, "big") + data


def u16s(values: Iterable[int]) -> bytes:
    """Big-endian u16 values back to back."""
    values = tuple(values)
    return struct.pack(f"!{len(values)}H", *values)


def client_hello(
    *,
    sni: str | None = "example.com",
    alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
    versions: tuple[int, ...] | None = (GREASE_A, 0x0304, 0x0303),
    ciphers: tuple[int, ...] = (GREASE_A, *CHROME_CIPHERS),
    sigalgs: tuple[int, ...] = CHROME_SIGALGS,
    pq_key_share: bool = True,
    ech: bool = False,
    grease: bool = True,
    legacy_version: int = 0x0303,
    extensions: bool = True,
) -> bytes:
    """A ClientHello handshake message (type 1, 3-byte length, body) shaped like Chrome's."""
    exts = []
    if grease:
        exts.append(ext(GREASE_A, b""))
    if sni is not None:
        exts.append(ext(0x0000, vec(2, b"\x00" + vec(2, sni.encode()))))
    exts += [ext(0x0017, b""), ext(0xFF01, b"\x00"), ext(0x000A, vec(2, u16s((GREASE_A, X25519_MLKEM768, 0x1D, 0x17))))]
    exts += [ext(0x000B, b"\x01\x00"), ext(0x0023, b"")]
    if alpn:
        exts.append(ext(0x0010, vec(2, b"".join(vec(1, p) for p in alpn))))
    exts.append(ext(0x0005, b"\x01\x00\x00\x00\x00"))
    if sigalgs:
        exts.append(ext(0x000D, vec(2, u16s(sigalgs))))
    exts.append(ext(0x0012, b""))
    shares = struct.pack("!HH", GREASE_A, 1) + b"\x00"
    if pq_key_share:
        shares += struct.pack("!HH", X25519_MLKEM768, 1216) + bytes(range(256)) * 4 + bytes(192)
    shares += struct.pack("!HH", 0x001D, 32) + bytes(32)
    exts += [ext(0x0033, vec(2, shares)), ext(0x002D, b"\x01\x01")]
    if versions is not None:
        exts.append(ext(0x002B, vec(1, u16s(versions))))
    exts += [ext(0x001B, b"\x02\x00\x02"), ext(0x44CD, vec(2, vec(1, b"h2")))]
    if ech:
        exts.append(ext(0xFE0D, b"\x00\x00\x01\x00\x01\x5a" + vec(2, bytes(32)) + vec(2, bytes(144))))
    if grease:
        exts.append(ext(GREASE_B, b"\x00"))
    body = struct.pack("!H", legacy_version) + bytes(range(32)) + vec(1, bytes(32))
    body += vec(2, u16s(ciphers)) + b"\x01\x00"
    if extensions:
        body += vec(2, b"".join(exts))
    return b"\x01" + vec(3, body)


def tls_records(handshake: bytes, fragment: int = 1 << 14, version: int = 0x0301) -> bytes:
    """`handshake` cut into handshake records of at most `fragment` bytes each."""
    return b"".join(
        struct.pack("!BHH", 22, version, len(handshake[i : i + fragment])) + handshake[i : i + fragment]
        for i in range(0, len(handshake), fragment)
    )
