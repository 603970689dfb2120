"""TLS ClientHello decoder: record-layer reassembly, SNI, ALPN, versions, ECH and JA4.

References:
    RFC 8446 §4.1.2 (ClientHello), §4.2 (extensions, no duplicates), §4.2.1
        (supported_versions), §4.2.3 (signature_algorithms), §5.1 (record layer:
        fragments up to 2^14 bytes, handshake messages may span records, no
        interleaving with other content types)
    RFC 5246 §6.2.1, §7.4.1.2 (TLS 1.2 record and ClientHello; extensions optional)
    RFC 6066 §3 (server_name: HostName, no trailing dot)
    RFC 7301 §3.1 (ALPN ProtocolNameList, names of 1..255 bytes)
    RFC 8701 (GREASE values 0x?a?a)
    draft-ietf-tls-esni (encrypted_client_hello = 0xfe0d)
    FoxIO JA4 spec: https://github.com/FoxIO-LLC/ja4/blob/main/technical_details/JA4.md
"""

from __future__ import annotations

from hashlib import sha256
from struct import Struct, unpack_from

from detector.decode._reader import DecodeError
from detector.model import Anomaly, ClientHello, NeedMore

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
# A server's first handshake messages (HelloRequest, ServerHello): the caller fed us
# the other direction, which is "not a ClientHello", not a broken one.
_SERVER_FIRST_TYPES = frozenset((0, 2))
# Versions an SSLv2-format ClientHello carries: SSL 2.0, or SSL 3.0-TLS 1.2 (RFC 5246 App. E.2).
_SSLV2_HELLO_VERSIONS = frozenset((b"\x00\x02", b"\x03\x00", b"\x03\x01", b"\x03\x02", b"\x03\x03"))

RECORD_HEADER_LEN = 5
HANDSHAKE_HEADER_LEN = 4
# RFC 8446 §5.1 / RFC 5246 §6.2.1: a TLSPlaintext fragment MUST NOT exceed 2^14 bytes.
MAX_RECORD_LEN = 1 << 14
# The handshake length field allows 2^24. Real ClientHellos are ~0.5 kB, ~1.8 kB with
# an ML-KEM/Kyber key share and 11 kB in the largest capture we know (many PSK
# identities and padding); 64 KiB leaves wide room and bounds what the TCP/QUIC
# reassembly above us has to buffer for one flow.
MAX_HANDSHAKE_LEN = 64 * 1024
# RFC 8446 §4.1.2: legacy_session_id<0..32>.
MAX_SESSION_ID_LEN = 32
# A DNS name is at most 253 characters in text (255 octets on the wire); an SNI
# longer than that names no host that DNS could resolve.
MAX_SNI_LEN = 253

EXT_SERVER_NAME = 0x0000
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ECH = 0xFE0D
SNI_HOST_NAME = 0

ANOMALIES: dict[str, str] = {
    "tls.sslv2_hello": "an SSLv2-format (pre-TLS) ClientHello; not decoded",
    "tls.bad_record_version": "a later handshake record does not carry version 3.x",
    "tls.record_too_long": "a record longer than 2^14 bytes (RFC 8446 §5.1)",
    "tls.record_empty": "a zero-length handshake record (RFC 8446 §5.1 forbids it)",
    "tls.record_interleaved": "another content type arrived before the ClientHello was complete",
    "tls.not_client_hello": "the first handshake message is neither a ClientHello nor a server message",
    "tls.handshake_too_long": f"a ClientHello longer than {MAX_HANDSHAKE_LEN} bytes",
    "tls.body_truncated": "the version, random or session id run past the ClientHello",
    "tls.session_id_too_long": "legacy_session_id longer than 32 bytes",
    "tls.cipher_suites_malformed": "the cipher suite vector overflows or has an odd length",
    "tls.compression_malformed": "the compression method vector overflows the ClientHello",
    "tls.ext_len_overflow": "the extension block or one extension runs past its container",
    "tls.trailing_data": "bytes after the extension block inside the ClientHello",
    "tls.ext_duplicate": "the same extension type twice (RFC 8446 §4.2)",
    "tls.sni_malformed": "server_name list overflows, an empty or non-printable host name",
    "tls.sni_too_long": f"a server_name host longer than {MAX_SNI_LEN} characters",
    "tls.alpn_malformed": "ALPN list overflows or holds an empty protocol name",
    "tls.versions_malformed": "supported_versions overflows or has an odd length",
    "tls.sigalgs_malformed": "signature_algorithms overflows or has an odd length",
}

SSLV2_HELLO = Anomaly("tls.sslv2_hello")
BAD_RECORD_VERSION = Anomaly("tls.bad_record_version")
RECORD_TOO_LONG = Anomaly("tls.record_too_long")
RECORD_EMPTY = Anomaly("tls.record_empty")
RECORD_INTERLEAVED = Anomaly("tls.record_interleaved")
NOT_CLIENT_HELLO = Anomaly("tls.not_client_hello")
HANDSHAKE_TOO_LONG = Anomaly("tls.handshake_too_long")
BODY_TRUNCATED = Anomaly("tls.body_truncated")
SESSION_ID_TOO_LONG = Anomaly("tls.session_id_too_long")
CIPHER_SUITES_MALFORMED = Anomaly("tls.cipher_suites_malformed")
COMPRESSION_MALFORMED = Anomaly("tls.compression_malformed")
EXT_LEN_OVERFLOW = Anomaly("tls.ext_len_overflow")
TRAILING_DATA = Anomaly("tls.trailing_data")
EXT_DUPLICATE = Anomaly("tls.ext_duplicate")
SNI_MALFORMED = Anomaly("tls.sni_malformed")
SNI_TOO_LONG = Anomaly("tls.sni_too_long")
ALPN_MALFORMED = Anomaly("tls.alpn_malformed")
VERSIONS_MALFORMED = Anomaly("tls.versions_malformed")
SIGALGS_MALFORMED = Anomaly("tls.sigalgs_malformed")

# JA4 version codes (JA4.md "TLS and DTLS Version"); anything else is "00".
_JA4_VERSIONS: dict[int, str] = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_JA4_EMPTY = "000000000000"
_JA4_NOT_HASHED = (EXT_SERVER_NAME, EXT_ALPN)
_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# SNI host names are DNS names in ASCII (RFC 6066 §3); printable, no space.
_SNI_BYTES = bytes(range(0x21, 0x7F))


# The 16 GREASE code points as a set, for the per-extension test of the hot path.
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
_EXT_HEAD = Struct("!HH")
_OPENED = frozenset((EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS, EXT_SIGNATURE_ALGORITHMS))


def is_grease(value: int) -> bool:
    """True for the 16 reserved GREASE code points 0x0a0a, 0x1a1a, ... 0xfafa (RFC 8701)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def ja4_fingerprint(
    transport: str,
    version: int,
    ciphers: list[int],
    extensions: list[int],
    alpn_first: bytes | None,
    sigalgs: list[int],
) -> str:
    """The JA4 string for one ClientHello, per FoxIO's JA4.md.

    `version` is the highest non-GREASE supported_versions entry, or the legacy
    version when that extension is absent (0 when unknown). Lists are as on the
    wire, GREASE included (removed here); `extensions` are type codes in order.
    """
    ciphers = [c for c in ciphers if not is_grease(c)]
    extensions = [e for e in extensions if not is_grease(e)]
    sigalgs = [s for s in sigalgs if not is_grease(s)]
    sni = "d" if EXT_SERVER_NAME in extensions else "i"
    ja4_a = (
        f"{transport}{_JA4_VERSIONS.get(version, '00')}{sni}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_ja4_alpn(alpn_first)}"
    )
    ja4_b = _hash12(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else _JA4_EMPTY
    hashed = sorted(e for e in extensions if e not in _JA4_NOT_HASHED)
    if hashed:
        text = ",".join(f"{e:04x}" for e in hashed)
        if sigalgs:  # "If there are no signature algorithms ... the string ends without an underscore"
            text += "_" + ",".join(f"{s:04x}" for s in sigalgs)
        ja4_c = _hash12(text)
    else:
        ja4_c = _JA4_EMPTY
    return f"{ja4_a}_{ja4_b}_{ja4_c}"


def _hash12(text: str) -> str:
    return sha256(text.encode("ascii")).hexdigest()[:12]


def _ja4_alpn(alpn: bytes | None) -> str:
    """First and last character of the first ALPN value; hex digits if either is not alphanumeric."""
    if not alpn:
        return "00"
    first, last = alpn[0], alpn[-1]
    if first in _ALNUM and last in _ALNUM:
        return chr(first) + chr(last)
    text = alpn.hex()
    return text[0] + text[-1]


# ---------------------------------------------------------------------------
# Record layer
# ---------------------------------------------------------------------------


def parse_tls_client_hello(stream: bytes, ja4: bool = True) -> ClientHello | NeedMore | Anomaly | None:
    """Decode the ClientHello at the start of a client→server TCP stream.

    Reassembles the handshake message across TLS records and returns as soon as
    the whole ClientHello is present, even if its last record is not. NeedMore
    carries a lower bound of the stream length needed; None means the stream is
    not TLS or starts with a server's message. With `ja4` false the fingerprint is
    left empty (a third of the work, for callers that only need the name).
    """
    try:
        return _parse_records(stream, ja4)
    except DecodeError as err:
        return err.anomaly


def _parse_records(stream: bytes, ja4: bool) -> ClientHello | NeedMore | Anomaly | None:
    n = len(stream)
    if n == 0:
        return NeedMore(RECORD_HEADER_LEN)
    if stream[0] != CONTENT_HANDSHAKE:
        return _sslv2_or_none(stream)
    # First record: a bad version means "not TLS" (cheap reject of binary protocols).
    if (n > 1 and stream[1] != 3) or (n > 2 and stream[2] > 4):
        return None
    frags: list[bytes] = []
    have = 0  # handshake bytes gathered
    need = 0  # total handshake message length, once its header is in
    pos = 0
    while True:
        if pos + RECORD_HEADER_LEN > n:
            _check_partial_header(stream, pos)
            return NeedMore(pos + RECORD_HEADER_LEN + max(need - have, 0))
        ctype, major, minor, rlen = unpack_from("!BBBH", stream, pos)
        if ctype != CONTENT_HANDSHAKE:
            return RECORD_INTERLEAVED
        if major != 3 or minor > 4:
            return BAD_RECORD_VERSION
        if rlen > MAX_RECORD_LEN:
            return RECORD_TOO_LONG
        if rlen == 0:
            return RECORD_EMPTY
        start = pos + RECORD_HEADER_LEN
        end = min(start + rlen, n)
        frags.append(stream[start:end])
        have += end - start
        if not need and have >= HANDSHAKE_HEADER_LEN:
            head = b"".join(frags)
            if head[0] != HANDSHAKE_CLIENT_HELLO:
                return _not_client_hello(head[0])
            length = int.from_bytes(head[1:4], "big")
            if length > MAX_HANDSHAKE_LEN:
                return HANDSHAKE_TOO_LONG
            need = HANDSHAKE_HEADER_LEN + length
            frags = [head]
        elif not need and have and frags[0][0] != HANDSHAKE_CLIENT_HELLO:
            return _not_client_hello(frags[0][0])
        if need and have >= need:
            message = frags[0] if len(frags) == 1 else b"".join(frags)
            return _parse_body(message, need, "t", ja4)
        if end < start + rlen:  # this record is cut off in the buffer
            missing = (need - have) if need else HANDSHAKE_HEADER_LEN - have
            if missing <= start + rlen - end:
                return NeedMore(end + missing)
            return NeedMore(start + rlen)
        pos = start + rlen


def _check_partial_header(stream: bytes, pos: int) -> None:
    """Reject a cut-off later record header whose available bytes already show it is wrong."""
    if pos >= len(stream):
        return
    if stream[pos] != CONTENT_HANDSHAKE:
        raise DecodeError(RECORD_INTERLEAVED)
    if (pos + 1 < len(stream) and stream[pos + 1] != 3) or (pos + 2 < len(stream) and stream[pos + 2] > 4):
        raise DecodeError(BAD_RECORD_VERSION)


def _sslv2_or_none(stream: bytes) -> Anomaly | None:
    """An SSLv2-format ClientHello (2-byte header with the high bit set, type 1, version 2 or 3.x)."""
    if len(stream) >= 5 and stream[0] & 0x80 and stream[2] == 1 and stream[3:5] in _SSLV2_HELLO_VERSIONS:
        return SSLV2_HELLO
    return None


def _not_client_hello(msg_type: int) -> Anomaly | None:
    return None if msg_type in _SERVER_FIRST_TYPES else NOT_CLIENT_HELLO


# ---------------------------------------------------------------------------
# Handshake message
# ---------------------------------------------------------------------------


def parse_client_hello_handshake(
    hs: bytes, transport: str = "t", ja4: bool = True
) -> ClientHello | NeedMore | Anomaly | None:
    """Decode a bare handshake message (type 1, 3-byte length, body), e.g. QUIC CRYPTO data.

    `transport` is JA4's first letter: "t" TCP, "q" QUIC, "d" DTLS; `ja4` as for
    `parse_tls_client_hello`. Bytes after the message are ignored.
    """
    n = len(hs)
    if n == 0:
        return NeedMore(HANDSHAKE_HEADER_LEN)
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        return _not_client_hello(hs[0])
    if n < HANDSHAKE_HEADER_LEN:
        return NeedMore(HANDSHAKE_HEADER_LEN)
    length = int.from_bytes(hs[1:4], "big")
    if length > MAX_HANDSHAKE_LEN:
        return HANDSHAKE_TOO_LONG
    if n < HANDSHAKE_HEADER_LEN + length:
        return NeedMore(HANDSHAKE_HEADER_LEN + length)
    try:
        return _parse_body(hs, HANDSHAKE_HEADER_LEN + length, transport, ja4)
    except DecodeError as err:
        return err.anomaly


def _parse_body(hs: bytes, end: int, transport: str, ja4: bool) -> ClientHello:
    """The ClientHello body in hs[4:end]; raises DecodeError with the field's anomaly.

    Plain offset arithmetic, no cursor objects: this runs for every TLS flow."""
    pos = HANDSHAKE_HEADER_LEN
    if pos + 35 > end:  # version, random, session id length
        raise DecodeError(BODY_TRUNCATED)
    legacy_version = (hs[pos] << 8) | hs[pos + 1]
    sid_len = hs[pos + 34]
    if sid_len > MAX_SESSION_ID_LEN:
        raise DecodeError(SESSION_ID_TOO_LONG)
    pos += 35 + sid_len
    start, pos = _vector(hs, pos, end, 2, BODY_TRUNCATED, CIPHER_SUITES_MALFORMED)
    ciphers = _u16s(hs, start, pos, CIPHER_SUITES_MALFORMED, ja4)
    pos = _vector(hs, pos, end, 1, BODY_TRUNCATED, COMPRESSION_MALFORMED)[1]
    exts = _Extensions()
    if pos < end:  # extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2)
        start, pos = _vector(hs, pos, end, 2, BODY_TRUNCATED, EXT_LEN_OVERFLOW)
        if pos < end:
            raise DecodeError(TRAILING_DATA)
        exts.read(hs, start, pos, ja4)
    if exts.versions is None:
        offered: tuple[int, ...] = (legacy_version,)
    else:
        offered = tuple(v for v in exts.versions if v not in _GREASE)
    alpn = exts.alpn
    return ClientHello(
        sni=exts.sni,
        alpn=tuple(p.decode("ascii", "backslashreplace") for p in alpn),
        versions=offered,
        ech=EXT_ECH in exts.types,
        ja4=ja4_fingerprint(
            transport, max(offered, default=0), ciphers, exts.types, alpn[0] if alpn else None, exts.sigalgs
        )
        if ja4
        else "",
    )


def _vector(hs: bytes, pos: int, end: int, width: int, short: Anomaly, overflow: Anomaly) -> tuple[int, int]:
    """The vector at `pos` with a `width`-byte (1 or 2) length prefix, as (start, end) of its
    contents; a missing prefix raises `short`, contents past `end` raise `overflow`."""
    if pos + width > end:
        raise DecodeError(short)
    start = pos + width
    stop = start + (hs[pos] if width == 1 else (hs[pos] << 8) | hs[pos + 1])
    if stop > end:
        raise DecodeError(overflow)
    return start, stop


def _u16s(hs: bytes, start: int, stop: int, error: Anomaly, build: bool = True) -> list[int]:
    """hs[start:stop] as big-endian u16 values; an odd length raises `error`. Without
    `build` the length is only checked and [] returned."""
    if (stop - start) & 1:
        raise DecodeError(error)
    return list(unpack_from(f"!{(stop - start) >> 1}H", hs, start)) if build else []


class _Extensions:
    """What the extension block holds that the sensor uses: types in order, SNI, ALPN, versions, sigalgs."""

    __slots__ = ("types", "sni", "alpn", "versions", "sigalgs")

    def __init__(self) -> None:
        self.types: list[int] = []
        self.sni: str | None = None
        self.alpn: list[bytes] = []
        self.versions: list[int] | None = None  # None: no supported_versions extension
        self.sigalgs: list[int] = []

    def read(self, hs: bytes, pos: int, end: int, ja4: bool) -> None:
        """Walk the extensions in hs[pos:end]; only four types are opened, the rest only
        counted. The first fault in wire order is raised, as if each extension were checked
        (duplicate, then contents) when reached; the walk itself only collects, because a
        per-extension duplicate test costs more than the whole walk."""
        types = self.types
        opened: list[tuple[int, int, int, int]] = []  # (index in types, type, start, end)
        head = _EXT_HEAD.unpack_from
        broken = False
        while pos < end:
            if pos + 4 > end:
                broken = True
                break
            etype, length = head(hs, pos)
            start, pos = pos + 4, pos + 4 + length
            if pos > end:
                broken = True
                break
            if etype in _OPENED:
                opened.append((len(types), etype, start, pos))
            types.append(etype)
        dup = _first_duplicate(types) if len(set(types)) < len(types) else len(types)
        for index, etype, start, stop in opened:
            if index >= dup:
                break
            self._open(etype, hs, start, stop, ja4)
        if dup < len(types):
            raise DecodeError(EXT_DUPLICATE)
        if broken:
            raise DecodeError(EXT_LEN_OVERFLOW)

    def _open(self, etype: int, hs: bytes, start: int, end: int, ja4: bool) -> None:
        if etype == EXT_SERVER_NAME:
            self.sni = _server_name(hs, start, end)
        elif etype == EXT_ALPN:
            self.alpn = _alpn(hs, start, end)
        elif etype == EXT_SUPPORTED_VERSIONS:
            self.versions = _u16s(hs, *_whole(hs, start, end, 1, VERSIONS_MALFORMED), VERSIONS_MALFORMED)
        else:
            self.sigalgs = _u16s(hs, *_whole(hs, start, end, 2, SIGALGS_MALFORMED), SIGALGS_MALFORMED, ja4)


def _first_duplicate(types: list[int]) -> int:
    """The index of the first extension type seen before (GREASE may repeat), or len(types)."""
    seen: set[int] = set()
    for index, etype in enumerate(types):
        if etype in seen:
            return index
        if etype not in _GREASE:
            seen.add(etype)
    return len(types)


def _whole(hs: bytes, start: int, end: int, width: int, error: Anomaly) -> tuple[int, int]:
    """The one vector that fills an extension's hs[start:end] exactly; else `error`."""
    inner = _vector(hs, start, end, width, error, error)
    if inner[1] != end:
        raise DecodeError(error)
    return inner


def _server_name(hs: bytes, pos: int, end: int) -> str | None:
    """The first host_name of a ServerNameList (RFC 6066 §3), lower-cased, no trailing dot."""
    pos = _whole(hs, pos, end, 2, SNI_MALFORMED)[0]
    host: str | None = None
    while pos < end:
        if pos + 3 > end:
            raise DecodeError(SNI_MALFORMED)
        start = pos + 3
        pos = start + ((hs[pos + 1] << 8) | hs[pos + 2])
        if pos > end:
            raise DecodeError(SNI_MALFORMED)
        if hs[start - 3] != SNI_HOST_NAME or host is not None:
            continue
        raw = hs[start : pos - 1] if hs[pos - 1 : pos] == b"." else hs[start:pos]
        if not raw or raw.translate(None, _SNI_BYTES):
            raise DecodeError(SNI_MALFORMED)
        if len(raw) > MAX_SNI_LEN:
            raise DecodeError(SNI_TOO_LONG)
        host = raw.decode("ascii").lower()
    return host


def _alpn(hs: bytes, pos: int, end: int) -> list[bytes]:
    """The ProtocolNameList of an ALPN extension (RFC 7301 §3.1); names are non-empty."""
    pos = _whole(hs, pos, end, 2, ALPN_MALFORMED)[0]
    protocols: list[bytes] = []
    while pos < end:
        start, pos = _vector(hs, pos, end, 1, ALPN_MALFORMED, ALPN_MALFORMED)
        if pos == start:
            raise DecodeError(ALPN_MALFORMED)
        protocols.append(hs[start:pos])
    return protocols
