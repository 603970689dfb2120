"""QUIC long-header datagrams: split coalesced packets, decrypt client Initials, return their CRYPTO frames.

The CRYPTO stream of a client's Initials carries the TLS ClientHello. This module
only decrypts and parses frames; CRYPTO reassembly across packets is state and
belongs to the flows stage (which calls `assemble_crypto` and then the TLS
ClientHello parser with transport "q").

References:
  RFC 8999 §5.1 (invariant long header), RFC 9000 §12.2 (coalesced packets),
  §12.4 (frames allowed per packet type), §16 (variable-length integers),
  §17.2 (long header: first byte, CID lengths <= 20), §17.2.2 (Initial: Token, Length),
  §17.2.5 (Retry has no Length), §19.2 (PING), §19.3 (ACK), §19.6 (CRYPTO),
  §19.19 (CONNECTION_CLOSE); RFC 9001 §5 (Initial protection, see quic_crypto);
  RFC 9369 §3.2 (v2 long-header packet types); RFC 9287 (the fixed bit may be greased,
  so it is not checked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from operator import itemgetter

from detector.decode._reader import DecodeError as _Malformed
from detector.decode.quic_crypto import (
    MAX_CID_LEN,
    SUPPORTED_VERSIONS,
    VERSION_1,
    VERSION_2,
    VERSION_T050,
    VERSION_T051,
    aead_open,
    initial_keys,
    remove_header_protection,
)
from detector.model import Anomaly, QuicInitial

# ---------------------------------------------------------------------------
# Anomalies and bounds
# ---------------------------------------------------------------------------

ANOMALIES: dict[str, str] = {
    "quic.truncated": "a long-header packet, its Length or its header-protection sample runs past the datagram",
    "quic.cid_too_long": "a connection ID longer than 20 bytes in a version that limits it (RFC 9000 §17.2)",
    "quic.unknown_version": "a long-header packet whose version has no known Initial salt (not GREASE, not gQUIC)",
    "quic.decrypt_failed": "a client Initial failed AEAD authentication with keys from its DCID or key_dcid "
    "(a server Initial, a later Initial whose key_dcid the caller did not pass, or corruption)",
    "quic.reserved_bits": "reserved long-header bits set after header protection removal (RFC 9000 §17.2)",
    "quic.frame_truncated": "a frame inside a decrypted Initial runs past the end of the payload",
    "quic.frame_not_allowed": "a frame type that may not appear in an Initial packet (RFC 9000 §12.4)",
    "quic.crypto_limit": "a CRYPTO frame reaching beyond MAX_CRYPTO_END bytes of the handshake stream",
    "quic.too_many_packets": "more than MAX_COALESCED_PACKETS long-header packets coalesced in one datagram",
    "quic.too_many_crypto_frames": "more than MAX_CRYPTO_FRAMES CRYPTO frames in one Initial packet",
}

TRUNCATED = Anomaly("quic.truncated")
CID_TOO_LONG = Anomaly("quic.cid_too_long")
UNKNOWN_VERSION = Anomaly("quic.unknown_version")
DECRYPT_FAILED = Anomaly("quic.decrypt_failed")
RESERVED_BITS = Anomaly("quic.reserved_bits")
FRAME_TRUNCATED = Anomaly("quic.frame_truncated")
FRAME_NOT_ALLOWED = Anomaly("quic.frame_not_allowed")
CRYPTO_LIMIT = Anomaly("quic.crypto_limit")
TOO_MANY_PACKETS = Anomaly("quic.too_many_packets")
TOO_MANY_CRYPTO_FRAMES = Anomaly("quic.too_many_crypto_frames")

# A client datagram coalesces at most one packet per encryption level before 1-RTT
# (Initial, 0-RTT, Handshake); 8 leaves room for odd stacks and stops crafted
# datagrams full of tiny packets from costing a key derivation each.
MAX_COALESCED_PACKETS = 8

# Highest CRYPTO stream offset (offset + length) accepted. A ClientHello with
# post-quantum key shares is 2-4 KiB (the largest QUIC one in the test captures is
# 2.5 KiB, the largest over TCP 11 KiB); 64 KiB is far above any real one and bounds
# what the flows stage buffers per connection.
MAX_CRYPTO_END = 64 * 1024

# Chrome's "chaos protection" splits its ClientHello into a handful of CRYPTO frames
# per Initial; hundreds would only come from crafted packets that aim at the
# reassembly's per-chunk cost.
MAX_CRYPTO_FRAMES = 64

# Keys tried, in order, for Initials under a GREASE version (RFC 9000 §15): v1, draft-29.
GREASE_KEY_VERSIONS = (VERSION_1, 0xFF00001D)

# Long-header packet types in v1 numbering (RFC 9000 §17.2); v2 is mapped onto these.
_INITIAL, _ZERO_RTT, _HANDSHAKE, _RETRY = 0, 1, 2, 3

_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO, _CLOSE, _CLOSE_APP = 0x00, 0x01, 0x02, 0x03, 0x06, 0x1C, 0x1D
_NON_ZERO = re.compile(rb"[^\x00]")


def _varint(buf: bytes, i: int, short: Anomaly) -> tuple[int, int]:
    """Read an RFC 9000 §16 varint at buf[i]; raise `short` if it runs past the end."""
    if i >= len(buf):
        raise _Malformed(short)
    first = buf[i]
    size = 1 << (first >> 6)
    if size == 1:
        return first, i + 1
    end = i + size
    if end > len(buf):
        raise _Malformed(short)
    return int.from_bytes(buf[i:end], "big") & ((1 << (8 * size - 2)) - 1), end


def _is_grease(version: int) -> bool:
    # RFC 9000 §15: versions 0x?a?a?a?a force version negotiation.
    return version & 0x0F0F0F0F == 0x0A0A0A0A


def _is_gquic(version: int) -> bool:
    # Google QUIC "Q0nn"/"T0nn" (ASCII) versions; T050/T051 are supported, the
    # others carry a QUIC-crypto CHLO rather than a TLS ClientHello.
    return version >> 16 in (0x5130, 0x5430)  # "Q0", "T0"


def parse_quic_initials(udp_payload: bytes, key_dcid: bytes | None = None) -> tuple[QuicInitial, ...] | Anomaly | None:
    """Decrypt the client Initial packets of one UDP datagram and return their CRYPTO frames.

    Returns None when the datagram is not a QUIC long-header packet (first bit 0: short
    header or other protocol), a Version Negotiation packet, Google QUIC other than
    T050/T051, or a GREASE version whose Initial opens with neither v1 nor draft-29
    keys (what clients probing version negotiation use); a tuple of
    QuicInitial (one per decrypted Initial; empty when the datagram holds only
    0-RTT/Handshake/Retry packets); or an Anomaly when no Initial could be decrypted
    and something was broken.
    key_dcid: the DCID the connection's Initial keys derive from, if the caller knows
    it, i.e. the `key_dcid` of the connection's latest decrypted QuicInitial. A
    client's later Initials carry the server-chosen DCID but keep the keys of its
    first (or post-Retry) DCID (RFC 9001 §5.2); without key_dcid they give
    quic.decrypt_failed. The packet's own DCID is tried when key_dcid fails.
    """
    if not udp_payload or udp_payload[0] < 0x80:
        return None
    try:
        return _parse_datagram(bytes(udp_payload), key_dcid)
    except _Malformed as err:
        return err.anomaly


def _parse_datagram(data: bytes, key_dcid: bytes | None) -> tuple[QuicInitial, ...] | Anomaly | None:
    n = len(data)
    if n < 7:  # first byte + version + DCID length + SCID length
        return TRUNCATED
    version = int.from_bytes(data[1:5], "big")
    if version == 0:
        return None
    if _is_grease(version):
        # Clients probing version negotiation (interop runner, tcpdump's quic_vn)
        # protect the Initial with v1 or draft-29 keys and send a real ClientHello;
        # anything else under a GREASE version is noise, not a broken packet.
        for key_version in GREASE_KEY_VERSIONS:
            result = _parse_coalesced(data, version, key_version, key_dcid)
            if not isinstance(result, Anomaly):
                return result
        return None
    if version not in SUPPORTED_VERSIONS:
        return None if _is_gquic(version) else UNKNOWN_VERSION
    return _parse_coalesced(data, version, version, key_dcid)


def _parse_coalesced(
    data: bytes, version: int, key_version: int, key_dcid: bytes | None
) -> tuple[QuicInitial, ...] | Anomaly:
    n = len(data)
    records: list[QuicInitial] = []
    anomaly: Anomaly | None = None
    first_dcid: bytes | None = None
    off = 0
    for _ in range(MAX_COALESCED_PACKETS):
        try:
            end, dcid, record = _parse_packet(data, off, version, key_version, key_dcid)
        except _Malformed as err:
            anomaly = anomaly or err.anomaly
            break
        if first_dcid is None:
            first_dcid = dcid
        elif dcid != first_dcid:
            break  # RFC 9000 §12.2: ignore coalesced packets for another connection
        if isinstance(record, Anomaly):
            anomaly = anomaly or record
        elif record is not None:
            records.append(record)
        off = end
        # A short-header packet or trailing padding ends the long-header run; so does
        # a packet of another version (not a coalesced packet of this connection).
        if off >= n or data[off] < 0x80 or data[off + 1 : off + 5] != data[1:5]:
            break
    else:
        anomaly = anomaly or TOO_MANY_PACKETS
    if records:
        return tuple(records)
    return anomaly if anomaly is not None else ()


def _parse_packet(
    data: bytes, off: int, version: int, key_version: int, key_dcid: bytes | None
) -> tuple[int, bytes, QuicInitial | Anomaly | None]:
    """Parse the long header at data[off]; return (end offset, DCID, Initial record or None)."""
    n = len(data)
    if off + 7 > n:
        raise _Malformed(TRUNCATED)
    first = data[off]
    dcid_len = data[off + 5]
    p = off + 6
    if dcid_len > MAX_CID_LEN:
        raise _Malformed(CID_TOO_LONG)
    dcid = data[p : p + dcid_len]
    p += dcid_len
    if p >= n:
        raise _Malformed(TRUNCATED)
    scid_len = data[p]
    if scid_len > MAX_CID_LEN:
        raise _Malformed(CID_TOO_LONG)
    scid = data[p + 1 : p + 1 + scid_len]
    p += 1 + scid_len
    ptype = (first >> 4) & 0x03
    if version == VERSION_2:
        ptype = (ptype - 1) & 0x03  # RFC 9369 §3.2: Retry 0, Initial 1, 0-RTT 2, Handshake 3
    if ptype == _RETRY:
        return n, dcid, None  # no Length field: a Retry fills the rest of the datagram
    if ptype == _INITIAL:
        token_len, p = _varint(data, p, TRUNCATED)
        p += token_len
    length, p = _varint(data, p, TRUNCATED)
    end = p + length
    if end > n:
        raise _Malformed(TRUNCATED)
    if ptype != _INITIAL:
        return end, dcid, None
    return end, dcid, _open_initial(data[off:end], p - off, version, key_version, dcid, scid, key_dcid)


def _open_initial(
    packet: bytes,
    pn_offset: int,
    version: int,
    key_version: int,
    dcid: bytes,
    scid: bytes,
    key_dcid: bytes | None,
) -> QuicInitial | Anomaly:
    plain: bytes | None = None
    for cid in (dcid,) if not key_dcid or key_dcid == dcid else (key_dcid, dcid):
        keys = initial_keys(key_version, cid, True)
        if keys is None:  # unreachable: the version was checked, kept for the type checker
            return UNKNOWN_VERSION
        unprotected = remove_header_protection(packet, pn_offset, keys.hp)
        if unprotected is None:
            return TRUNCATED
        header, pn, pn_len = unprotected
        plain = aead_open(keys, pn, header, packet[pn_offset + pn_len :])
        if plain is not None:
            break
    if plain is None:
        return DECRYPT_FAILED
    if header[0] & 0x0C:
        return RESERVED_BITS
    try:
        if version == VERSION_T050 or version == VERSION_T051:
            crypto = _gquic_crypto_frames(plain)
        else:
            crypto = _crypto_frames(plain)
    except _Malformed as err:
        return err.anomaly
    return QuicInitial(version=version, dcid=dcid, scid=scid, crypto=crypto, key_dcid=cid)


def _crypto_frames(plain: bytes) -> tuple[tuple[int, bytes], ...]:
    """Walk the frames of a decrypted Initial; return the CRYPTO frames as (offset, data)."""
    out: list[tuple[int, bytes]] = []
    # Initials end in ~1000 bytes of PADDING: cut them in C, not byte by byte.
    n = len(plain.rstrip(b"\x00"))
    i = 0
    while i < n:
        ftype = plain[i]
        i += 1
        if ftype == _PADDING:
            m = _NON_ZERO.search(plain, i, n)
            i = m.start() if m else n
        elif ftype == _CRYPTO:
            i = _crypto_frame(plain, i, out)
        elif ftype == _PING:
            pass
        elif ftype == _ACK or ftype == _ACK_ECN:
            i = _skip_ack(plain, i, ftype == _ACK_ECN)
        elif ftype == _CLOSE or ftype == _CLOSE_APP:
            # 0x1d is formally 0-RTT/1-RTT only, but tolerated: it carries nothing we read.
            _, i = _varint(plain, i, FRAME_TRUNCATED)  # error code
            if ftype == _CLOSE:
                _, i = _varint(plain, i, FRAME_TRUNCATED)  # offending frame type
            reason_len, i = _varint(plain, i, FRAME_TRUNCATED)
            i += reason_len
            if i > n:
                raise _Malformed(FRAME_TRUNCATED)
        else:
            raise _Malformed(FRAME_NOT_ALLOWED)
    return tuple(out)


def _crypto_frame(plain: bytes, i: int, out: list[tuple[int, bytes]]) -> int:
    """Read a CRYPTO frame body (offset, length, data) at plain[i] into out; return the end."""
    offset, i = _varint(plain, i, FRAME_TRUNCATED)
    length, i = _varint(plain, i, FRAME_TRUNCATED)
    if i + length > len(plain):
        raise _Malformed(FRAME_TRUNCATED)
    if offset + length > MAX_CRYPTO_END:
        raise _Malformed(CRYPTO_LIMIT)
    if len(out) == MAX_CRYPTO_FRAMES:
        raise _Malformed(TOO_MANY_CRYPTO_FRAMES)
    out.append((offset, plain[i : i + length]))
    return i + length


# Google QUIC T050/T051 keep gQUIC frame numbering inside IETF-protected Initials
# (Chromium quic_framer.cc): 0x00 PADDING, 0x07 PING, 0x08 CRYPTO (varint offset,
# varint length). Its ACK and STREAM layouts differ from IETF's; the ClientHello's
# CRYPTO frame comes first, so the walk stops at any other frame without complaint.
_GQUIC_PING, _GQUIC_CRYPTO = 0x07, 0x08


def _gquic_crypto_frames(plain: bytes) -> tuple[tuple[int, bytes], ...]:
    """CRYPTO frames of a decrypted T050/T051 Initial, up to the first frame not read."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(plain):
        ftype = plain[i]
        if ftype == _GQUIC_CRYPTO:
            i = _crypto_frame(plain, i + 1, out)
        elif ftype == _GQUIC_PING:
            i += 1
        else:  # PADDING (fills the rest of the packet), ACK, STREAM, ...
            break
    return tuple(out)


def _skip_ack(plain: bytes, i: int, ecn: bool) -> int:
    """Skip an ACK frame body (RFC 9000 §19.3); the range loop ends when the payload does."""
    _, i = _varint(plain, i, FRAME_TRUNCATED)  # largest acknowledged
    _, i = _varint(plain, i, FRAME_TRUNCATED)  # ACK delay
    ranges, i = _varint(plain, i, FRAME_TRUNCATED)
    _, i = _varint(plain, i, FRAME_TRUNCATED)  # first ACK range
    # Each range takes at least 2 bytes, so a huge count runs out of payload quickly.
    if ranges > (len(plain) - i) // 2:
        raise _Malformed(FRAME_TRUNCATED)
    for _ in range(2 * ranges + (3 if ecn else 0)):  # (gap, length) pairs, then ECN counts
        _, i = _varint(plain, i, FRAME_TRUNCATED)
    return i


def assemble_crypto(chunks: Iterable[tuple[int, bytes]]) -> bytes:
    """The contiguous CRYPTO stream prefix from offset 0 of possibly overlapping, unordered chunks.

    Overlapping chunks are retransmissions and should carry the same bytes; where they
    differ, the chunk with the lower offset (then the one given first) wins. Stops at
    the first gap; returns b"" if offset 0 is missing.
    """
    end = 0
    parts: list[bytes] = []
    for offset, data in sorted(chunks, key=itemgetter(0)):
        if offset > end:
            break
        stop = offset + len(data)
        if stop > end:
            parts.append(data[end - offset :])
            end = stop
    return b"".join(parts)
