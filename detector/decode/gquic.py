"""Google QUIC (gQUIC Q0xx) client packets: find the QUIC-crypto CHLO and return its SNI as a ClientHello.

gQUIC before the TLS-based T050/T051 (which `quic` decodes) runs Google's own
handshake: the client's first packets carry a CHLO message (tag/value pairs, the
server name in tag "SNI\\0") in the clear, or, from Q050 on, under public Initial
keys like IETF QUIC's. Three packet layouts reach this module:

  - Q043 and earlier: public header (flags, 8-byte CID, version, packet number),
    then a 12-byte FNV-1a message-authentication hash (NULL encryption), then
    frames; the CHLO travels in a STREAM frame on stream 1.
  - Q046: IETF-invariant long header with DCID/SCID length nibbles, then the
    same hash and frames.
  - Q050: IETF long header (Token, Length), Initial packet protection with the
    Q050 salt (quic_crypto.q050_initial_keys); the CHLO travels in a gQUIC
    CRYPTO frame (0x08).

JA4 is undefined for gQUIC, so the ClientHello has ja4 "", no ALPN, no ECH, and
versions = (the packet's version, e.g. 0x51303339 for "Q039",).

References:
  gQUIC wire layout: "QUIC Wire Layout Specification" (Google, docs.google.com/document/d/
  1WJvyZflAO2pq77yOLbp9NsGjC1CHetAXV8I0fQe-B_U) — public header, frame types, STREAM/ACK flags.
  gQUIC crypto: "QUIC Crypto" (Google, docs.google.com/document/d/
  1g5nIXAIkN_Y-7XJW5K45IblHd_L2f5LTaDUDwvZ5L6g) — handshake message: tag, u16 count, u16
  padding, (tag, u32 end offset) pairs little-endian, values; tags SNI, VER, UAID.
  Wireshark epan/dissectors/packet-gquic.c (dissect_gquic_common, dissect_gquic_q046,
  is_gquic_unencrypt, dissect_gquic_frame_type) and packet-quic.c (Q050 Initial salt);
  nDPI src/lib/protocols/quic.c (gQUIC versions, Q050 salt, header offsets).
  RFC 9000 §16 (variable-length integers, used by Q050 headers and CRYPTO frames),
  §17.2 (long header); RFC 9001 §5 (Initial protection, see quic_crypto).
"""

from __future__ import annotations

from struct import unpack_from

from detector.decode._reader import DecodeError as _Malformed
from detector.decode.quic import MAX_CRYPTO_END, _varint
from detector.decode.quic_crypto import (
    MAX_CID_LEN,
    VERSION_Q050,
    aead_open,
    q050_initial_keys,
    remove_header_protection,
)
from detector.decode.tls import MAX_SNI_LEN
from detector.model import Anomaly, ClientHello, NeedMore

# ---------------------------------------------------------------------------
# Anomalies and bounds
# ---------------------------------------------------------------------------

ANOMALIES: dict[str, str] = {
    "gquic.truncated": "a Q050 long header, its Length or its header-protection sample runs past the datagram",
    "gquic.decrypt_failed": "a Q050 client Initial failed AEAD authentication with keys from its DCID",
    "gquic.chlo_too_many_tags": "a CHLO announcing more tag/value entries than MAX_CHLO_TAGS",
    "gquic.chlo_bad_offset": "a CHLO value end offset below the one before it, or beyond MAX_CHLO_LEN",
    "gquic.sni_malformed": "an empty or non-printable SNI tag value in a CHLO",
    "gquic.sni_too_long": f"an SNI tag value longer than {MAX_SNI_LEN} characters",
}

TRUNCATED = Anomaly("gquic.truncated")
DECRYPT_FAILED = Anomaly("gquic.decrypt_failed")
CHLO_TOO_MANY_TAGS = Anomaly("gquic.chlo_too_many_tags")
CHLO_BAD_OFFSET = Anomaly("gquic.chlo_bad_offset")
SNI_MALFORMED = Anomaly("gquic.sni_malformed")
SNI_TOO_LONG = Anomaly("gquic.sni_too_long")

# Chromium's CryptoFramer refuses handshake messages with more entries than this
# (crypto_protocol.h kMaxEntries); real CHLOs carry 15-30.
MAX_CHLO_TAGS = 128

# A CHLO is padded to fill one packet and grows past it only with cached certificate
# hashes; the CRYPTO stream bound of `quic` (64 KiB) is far above any real one and
# bounds the NeedMore a caller might buffer for.
MAX_CHLO_LEN = MAX_CRYPTO_END

# The CHLO frame comes first in a client's packet, after at most an ACK, a
# STOP_WAITING and a PING; past this many frames the packet is not a CHLO packet
# (or is encrypted noise), and crafted runs of 1-byte frames stop costing a loop each.
MAX_FRAMES = 16

HASH_LEN = 12  # NULL encryption: FNV-1a-128 truncated to 12 bytes, before the frames

VERSION_Q046 = 0x51303436  # "Q046"

# Public flags (Q043 and earlier): a client's first packets carry the version (0x01)
# and an 8-byte CID (0x08); reset (0x02), multipath (0x40) and reserved (0x80) are clear.
_PUBLIC_FLAGS_MASK = 0xCB
_PUBLIC_FLAGS_CLIENT = 0x09
_PUBLIC_VERSION_AT = 9  # flags (1) + CID (8)
_PUBLIC_LAST = 43  # Q044 and later use the long header
_PN_LENGTHS = (1, 2, 4, 6)  # public flags bits 0x30

# Version-dependent wire changes (Wireshark packet-gquic.c, Chromium quic_framer.cc).
_PRIVATE_FLAGS_BEFORE = 34  # a private-flags byte after the hash; old ACK/STOP_WAITING layouts
_BIG_ENDIAN_FROM = 39  # integers (stream id, offsets, lengths) big-endian from Q039 on
_PADDING_TO_END_UNTIL = 37  # up to Q037 a PADDING frame fills the rest of the packet

_MIN_PUBLIC_LEN = _PUBLIC_VERSION_AT + 4 + 1 + HASH_LEN + 1 + 8  # header, hash, a frame byte, "CHLO" header
_MIN_LONG_LEN = 7  # first byte + version + CID length byte(s)

_CHLO = b"CHLO"
_TAG_SNI = b"SNI\x00"
_SNI_BYTES = frozenset(range(0x21, 0x7F))

# Frame types (gQUIC numbering).
_PADDING, _RST_STREAM, _CLOSE, _GOAWAY, _WINDOW_UPDATE, _BLOCKED, _STOP_WAITING, _PING, _CRYPTO = range(9)
_STREAM, _ACK = 0x80, 0x40


class _NotChlo(Exception):
    """The frames do not lead to a CHLO (encrypted payload, other frames, cut short): not ours."""


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def parse_gquic_chlo(udp_payload: bytes) -> ClientHello | NeedMore | Anomaly | None:
    """The CHLO of a Google QUIC client datagram (Q043 and earlier, Q046, Q050) as a ClientHello.

    Returns None for anything that is not a gQUIC packet carrying a CHLO (checked on
    the first bytes: public flags or long header, then an ASCII "Q0nn" version),
    including encrypted gQUIC packets, T050/T051 (decoded by `quic`) and Q050
    packets other than client Initials; NeedMore(total message length) when the CHLO
    continues in a later packet before its SNI value ends; an Anomaly for a broken
    CHLO or an undecryptable Q050 Initial. The SNI is lower-cased without a trailing
    dot; sni is None when the CHLO has no SNI tag.
    """
    n = len(udp_payload)
    if n < _MIN_LONG_LEN:
        return None
    first = udp_payload[0]
    try:
        if first & 0x80:
            if udp_payload[1] != 0x51 or udp_payload[2] != 0x30:  # "Q0"
                return None
            data = bytes(udp_payload)
            version = int.from_bytes(data[1:5], "big")
            if version == VERSION_Q046:
                return _q046(data, first, version)
            if version == VERSION_Q050:
                return _q050(data, first)
            return None
        if first & _PUBLIC_FLAGS_MASK != _PUBLIC_FLAGS_CLIENT or n < _MIN_PUBLIC_LEN:
            return None
        if udp_payload[9] != 0x51 or udp_payload[10] != 0x30:  # "Q0"
            return None
        return _public(bytes(udp_payload), first)
    except _NotChlo:
        return None
    except _Malformed as err:
        return err.anomaly


# ---------------------------------------------------------------------------
# Packet headers
# ---------------------------------------------------------------------------


def _public(data: bytes, first: int) -> ClientHello | NeedMore | Anomaly | None:
    """Q043 and earlier: flags, CID (8), version (4), packet number (1-6), hash, [private flags]."""
    tens, units = data[11] - 0x30, data[12] - 0x30
    if not (0 <= tens <= 9 and 0 <= units <= 9):
        return None
    minor = tens * 10 + units
    if minor > _PUBLIC_LAST:
        return None
    pn_len = _PN_LENGTHS[(first >> 4) & 0x03]
    pos = _PUBLIC_VERSION_AT + 4 + pn_len + HASH_LEN + (minor < _PRIVATE_FLAGS_BEFORE)
    version = int.from_bytes(data[9:13], "big")
    return _chlo_in_frames(data, pos, minor, pn_len, version)


def _q046(data: bytes, first: int, version: int) -> ClientHello | NeedMore | Anomaly | None:
    """Q046: long header with DCIL/SCIL nibbles (length + 3, 0 = absent), packet number, hash."""
    cil = data[5]
    dcid_len = (cil >> 4) + 3 if cil >> 4 else 0
    scid_len = (cil & 0x0F) + 3 if cil & 0x0F else 0
    pn_len = (first & 0x03) + 1
    pos = 6 + dcid_len + scid_len + pn_len + HASH_LEN
    return _chlo_in_frames(data, pos, 46, pn_len, version)


def _q050(data: bytes, first: int) -> ClientHello | NeedMore | Anomaly | None:
    """Q050: decrypt a client Initial (IETF long header, Q050 salt) and read its frames."""
    if (first >> 4) & 0x03:
        return None  # 0-RTT, Handshake or Retry: no CHLO in the clear
    n = len(data)
    dcid_len = data[5]
    if not dcid_len or dcid_len > MAX_CID_LEN:
        # No DCID: a server's Initial (Chromium clients send 8 bytes, servers none);
        # over 20: no Chromium Initial at all.
        return None
    p = 6 + dcid_len
    if p >= n:
        return TRUNCATED
    p += 1 + data[p]  # SCID
    token_len, p = _varint(data, p, TRUNCATED)
    length, p = _varint(data, p + token_len, TRUNCATED)
    end = p + length
    if end > n:
        return TRUNCATED
    keys = q050_initial_keys(data[6 : 6 + dcid_len])
    unprotected = remove_header_protection(data[:end], p, keys.hp)
    if unprotected is None:
        return TRUNCATED
    header, pn, pn_len = unprotected
    plain = aead_open(keys, pn, header, data[p + pn_len : end])
    if plain is None:
        return DECRYPT_FAILED
    return _chlo_in_frames(plain, 0, 50, pn_len, VERSION_Q050)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def _chlo_in_frames(data: bytes, pos: int, minor: int, pn_len: int, version: int) -> ClientHello | NeedMore | Anomaly:
    """Walk the frames from data[pos] to the first CHLO; parse it. Raises _NotChlo if there is none."""
    order = "big" if minor >= _BIG_ENDIAN_FROM else "little"
    end = len(data)
    for _ in range(MAX_FRAMES):
        if pos >= end:
            break
        ftype = data[pos]
        pos += 1
        if ftype & _STREAM:
            start, stop = _stream_frame(data, pos, ftype, order)
            if start is not None:
                return _parse_chlo(data, start, stop, version)
            pos = stop
        elif ftype & _ACK:
            pos = _skip_ack(data, pos, ftype, minor)
        elif ftype == _CRYPTO and minor >= 50:
            offset_end, length_end = _crypto_frame(data, pos)
            if data[length_end : length_end + 4] == _CHLO:
                return _parse_chlo(data, length_end, offset_end, version)
            pos = offset_end
        else:
            pos = _skip_regular(data, pos, ftype, minor, pn_len, order)
        if pos > end:
            break
    raise _NotChlo


def _stream_frame(data: bytes, pos: int, ftype: int, order: str) -> tuple[int | None, int]:
    """A STREAM frame body at data[pos]: (CHLO start or None, end of the frame's data)."""
    # Flags 1FDOOOSS: D = 2-byte data length present, OOO = offset length (0, 2-8), SS = id length - 1.
    id_len = (ftype & 0x03) + 1
    off_len = (ftype >> 2) & 0x07
    stream_id = int.from_bytes(_take(data, pos, id_len), order)
    pos += id_len + (off_len + 1 if off_len else 0)
    if ftype & 0x20:
        stop = pos + 2 + int.from_bytes(_take(data, pos, 2), order)
        pos += 2
        if stop > len(data):
            raise _NotChlo
    else:
        stop = len(data)
    if stream_id == 1 and data[pos : pos + 4] == _CHLO:  # stream 1: the crypto handshake stream
        return pos, stop
    return None, stop


def _crypto_frame(data: bytes, pos: int) -> tuple[int, int]:
    """A Q050 CRYPTO frame body (varint offset, varint length, data): (end, data start)."""
    try:
        _, pos = _varint(data, pos, TRUNCATED)
        length, pos = _varint(data, pos, TRUNCATED)
    except _Malformed:
        raise _NotChlo from None
    if pos + length > len(data):
        raise _NotChlo
    return pos + length, pos


def _skip_ack(data: bytes, pos: int, ftype: int, minor: int) -> int:
    """Skip an ACK frame body (flags 01NULLMM: N = ranges present, LL/MM = field lengths)."""
    largest_len = _PN_LENGTHS[(ftype >> 2) & 0x03]
    block_len = _PN_LENGTHS[ftype & 0x03]
    if minor < _PRIVATE_FLAGS_BEFORE:
        # entropy (1), largest observed, delay (2), timestamps, then NACK ranges and revived packets.
        pos = _skip_timestamps(data, pos + 1 + largest_len + 2)
        if ftype & 0x20:
            ranges = _u8(data, pos)
            pos += 1 + ranges * (block_len + 1)
            revived = _u8(data, pos)
            pos += 1 + revived * largest_len
        return pos
    # largest acked, delay (2), [block count], first block, (gap (1), block) per extra block, timestamps.
    pos += largest_len + 2
    blocks = 0
    if ftype & 0x20:
        blocks = _u8(data, pos)
        pos += 1
    pos += block_len + blocks * (1 + block_len)
    return _skip_timestamps(data, pos)


def _skip_timestamps(data: bytes, pos: int) -> int:
    """Skip an ACK's timestamp list: count (1), then delta (1) + time (4), then (delta (1) + time (2)) each."""
    count = _u8(data, pos)
    pos += 1
    return pos + 5 + (count - 1) * 3 if count else pos


def _skip_regular(data: bytes, pos: int, ftype: int, minor: int, pn_len: int, order: str) -> int:
    """Skip a frame of type 0x00-0x3f other than CRYPTO; raise _NotChlo for types no CHLO packet holds."""
    if ftype == _PADDING:
        if minor <= _PADDING_TO_END_UNTIL:
            raise _NotChlo  # the rest of the packet is padding
        while pos < len(data) and data[pos] == 0:
            pos += 1
        return pos
    if ftype == _PING:
        return pos
    if ftype == _STOP_WAITING:
        return pos + (minor < _PRIVATE_FLAGS_BEFORE) + pn_len  # [entropy], least unacked delta
    if ftype == _RST_STREAM:
        return pos + 16  # stream id (4), byte offset (8), error code (4)
    if ftype == _WINDOW_UPDATE:
        return pos + 12  # stream id (4), byte offset (8)
    if ftype == _BLOCKED:
        return pos + 4  # stream id
    if ftype == _CLOSE or ftype == _GOAWAY:
        pos += 4 if ftype == _CLOSE else 8  # error code [, last good stream id]
        return pos + 2 + int.from_bytes(_take(data, pos, 2), order)  # reason phrase
    raise _NotChlo  # congestion feedback, unknown types, CRYPTO before Q050


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise _NotChlo
    return data[pos : pos + n]


def _u8(data: bytes, pos: int) -> int:
    if pos >= len(data):
        raise _NotChlo
    return data[pos]


# ---------------------------------------------------------------------------
# The CHLO message
# ---------------------------------------------------------------------------


def _parse_chlo(data: bytes, start: int, stop: int, version: int) -> ClientHello | NeedMore | Anomaly:
    """The CHLO message at data[start:stop] ("CHLO", u16 count, u16 padding, entries, values)."""
    if start + 8 > stop:
        return NeedMore(0)
    count = data[start + 4] | data[start + 5] << 8
    if count > MAX_CHLO_TAGS:
        return CHLO_TOO_MANY_TAGS
    values = start + 8 + 8 * count
    if values > stop:
        return NeedMore(values - start)
    entries = unpack_from("<" + "4sI" * count, data, start + 8)
    prev = 0
    value_start = value_end = -1
    for i in range(0, 2 * count, 2):
        end_offset = entries[i + 1]
        if end_offset < prev or end_offset > MAX_CHLO_LEN:
            return CHLO_BAD_OFFSET
        if entries[i] == _TAG_SNI and value_start < 0:
            value_start, value_end = values + prev, values + end_offset
        prev = end_offset
    sni = None
    if value_start >= 0:
        if value_end > stop:
            return NeedMore(values + prev - start)
        sni = _host(data[value_start:value_end])
        if isinstance(sni, Anomaly):
            return sni
    return ClientHello(sni=sni, alpn=(), versions=(version,), ech=False, ja4="")


def _host(raw: bytes) -> str | Anomaly:
    """An SNI tag value as a host name: printable ASCII, lower-cased, no trailing dot."""
    if raw.endswith(b"."):
        raw = raw[:-1]
    if not raw or not _SNI_BYTES.issuperset(raw):
        return SNI_MALFORMED
    if len(raw) > MAX_SNI_LEN:
        return SNI_TOO_LONG
    return raw.decode("ascii").lower()
