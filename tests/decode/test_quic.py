"""QUIC Initial decoding: coalesced packets, frames, anomalies, CRYPTO assembly, and the shared real captures."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from _app_helpers import CAPTURES, mutations, require_captures, segments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quic_crypto import (
    CLIENT_PAYLOAD,
    DCID,
    V1_CLIENT_PACKET,
    V1_SERVER_PACKET,
    V2_CLIENT_PACKET,
)

from detector.decode import quic
from detector.decode.quic import (
    MAX_COALESCED_PACKETS,
    MAX_CRYPTO_END,
    MAX_CRYPTO_FRAMES,
    assemble_crypto,
    parse_quic_initials,
)
from detector.decode.quic_crypto import (
    VERSION_1,
    VERSION_2,
    VERSION_T051,
    aead_seal,
    encode_varint,
    header_mask,
    initial_keys,
    protect_initial,
    remove_header_protection,
)
from detector.decode.tls import parse_client_hello_handshake
from detector.model import Anomaly, ClientHello, QuicInitial

DRAFT_29 = 0xFF00001D
MVFST_27 = 0xFACEB002
SCID = bytes.fromhex("c0ffee")

# RFC 9001 A.2's ClientHello: the data of the CRYPTO frame at CLIENT_PAYLOAD[4:245].
RFC_CLIENT_HELLO = CLIENT_PAYLOAD[4:245]


def crypto(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame (type 0x06, varint offset, varint length, data)."""
    return b"\x06" + encode_varint(offset) + encode_varint(len(data)) + data


PING = b"\x01"
# ACK (0x02): largest 5, delay 0, 1 extra range, first range 0, gap 1, length 1.
ACK = bytes.fromhex("02050001000101")
# ACK_ECN (0x03): largest 2, delay 0x4010 (2-byte varint), no extra range, first 2, ECN counts 1/2/3.
ACK_ECN = bytes.fromhex("030240100002010203")
# CONNECTION_CLOSE (0x1c): error 0x0a, frame type 0x06, reason "bye".
CLOSE = bytes.fromhex("1c0a0603") + b"bye"


def initial(payload: bytes, version: int = VERSION_1, dcid: bytes = DCID, pn: int = 0, **kw: object) -> bytes:
    """A protected client Initial, padded to the 1200 bytes of RFC 9000 §14.1 when short."""
    payload = payload + bytes(max(0, 1150 - len(payload)))
    return protect_initial(version, dcid, SCID, pn, payload, **kw)  # type: ignore[arg-type]


def long_packet(ptype: int, body: bytes, version: int = VERSION_1, dcid: bytes = DCID) -> bytes:
    """A 0-RTT/Handshake-shaped long-header packet; its body is opaque to the decoder."""
    return (
        bytes((0xC0 | ptype << 4,))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + bytes((len(SCID),))
        + SCID
        + encode_varint(len(body))
        + body
    )


def reseal(packet: bytes, key_version: int = VERSION_1, *, first_or: int = 0, version: int | None = None) -> bytes:
    """Re-protect a client Initial after changing its header (reserved bits, version field)."""
    keys = initial_keys(key_version, DCID)
    assert keys is not None
    header, pn, pn_len = remove_header_protection(packet, PN_OFFSET, keys.hp) or (b"", 0, 0)
    plain = quic.aead_open(keys, pn, header, packet[len(header) :])
    assert plain is not None
    new = bytearray(header)
    new[0] |= first_or
    if version is not None:
        new[1:5] = version.to_bytes(4, "big")
    out = bytearray(bytes(new) + aead_seal(keys, pn, bytes(new), plain))
    mask = header_mask(keys.hp, out[PN_OFFSET + 4 : PN_OFFSET + 20])
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[PN_OFFSET + i] ^= mask[1 + i]
    return bytes(out)


# pn_offset of `initial(...)` packets: first, version, DCID len + 8, SCID len + 3, token len 0, Length (2).
PN_OFFSET = 1 + 4 + 1 + len(DCID) + 1 + len(SCID) + 1 + 2


def only(result: object) -> QuicInitial:
    assert isinstance(result, tuple) and len(result) == 1, result
    return result[0]


# ---------------------------------------------------------------------------
# Not QUIC, or QUIC we do not read: None, cheaply
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes.fromhex("40c0ffee0102030405"),  # short header (first bit 0): 1-RTT
        bytes.fromhex("16fefd00000000"),  # DTLS record: first bit 0
        bytes.fromhex("80000000000801020304050607080000000001"),  # Version Negotiation
        bytes.fromhex("c01a2a3a4a00000000"),  # GREASE version, not an Initial we can open
        bytes.fromhex("c35130343650") + bytes(40),  # gQUIC Q046 long header
        bytes.fromhex("c35130353008") + bytes(40),  # gQUIC Q050
    ],
    ids=["empty", "short-header", "dtls", "version-negotiation", "grease", "gquic-q046", "gquic-q050"],
)
def test_non_initial_traffic_returns_none(payload: bytes) -> None:
    assert parse_quic_initials(payload) is None


# ---------------------------------------------------------------------------
# RFC vectors through the datagram decoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("packet", "version"), [(V1_CLIENT_PACKET, VERSION_1), (V2_CLIENT_PACKET, VERSION_2)])
def test_the_rfc_client_initial_yields_its_clienthello(packet: bytes, version: int) -> None:
    rec = only(parse_quic_initials(packet))
    assert rec == QuicInitial(version=version, dcid=DCID, scid=b"", crypto=((0, RFC_CLIENT_HELLO),), key_dcid=DCID)
    ch = parse_client_hello_handshake(assemble_crypto(rec.crypto), transport="q")
    assert isinstance(ch, ClientHello) and ch.sni == "example.com" and ch.ja4.startswith("q")


def test_a_server_initial_does_not_open_with_client_keys() -> None:
    assert parse_quic_initials(V1_SERVER_PACKET) == quic.DECRYPT_FAILED


# ---------------------------------------------------------------------------
# Round trips through protect_initial
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2, DRAFT_29, MVFST_27, 0xFF000017, 0xFF000022])
def test_protect_initial_round_trips_with_padding_ping_ack_and_close(version: int) -> None:
    payload = ACK + PING + crypto(0, b"hello") + bytes(20) + ACK_ECN + PING + crypto(5, b" world") + CLOSE
    rec = only(parse_quic_initials(initial(payload, version)))
    assert (rec.version, rec.dcid, rec.scid, rec.key_dcid) == (version, DCID, SCID, DCID)
    assert rec.crypto == ((0, b"hello"), (5, b" world"))


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2, DRAFT_29])
def test_coalesced_initial_0rtt_handshake_and_short_header_are_split(version: int) -> None:
    # v2 renumbers the long-header types (RFC 9369 §3.2): 0-RTT 2, Handshake 3; v1: 1, 2.
    zero_rtt, handshake = (2, 3) if version == VERSION_2 else (1, 2)
    datagram = (
        initial(crypto(0, b"first"), version, pn=0)
        + long_packet(zero_rtt, bytes(50), version)
        + initial(crypto(5, b"second"), version, pn=1)
        + long_packet(handshake, bytes(30), version)
        + bytes.fromhex("40")
        + DCID
        + bytes(30)  # 1-RTT short header: ends the run
    )
    result = parse_quic_initials(datagram)
    assert isinstance(result, tuple)
    assert [r.crypto for r in result] == [((0, b"first"),), ((5, b"second"),)]


def test_datagram_with_only_0rtt_and_handshake_packets_is_an_empty_tuple() -> None:
    assert parse_quic_initials(long_packet(1, bytes(40)) + long_packet(2, bytes(40))) == ()


def test_retry_is_skipped() -> None:
    # Retry (type 3): no Length; token and 16-byte integrity tag fill the datagram.
    retry = bytes.fromhex("f0000000010008f067a5502a4262b5") + b"token" + bytes(16)
    assert parse_quic_initials(retry) == ()


def test_coalesced_packet_for_another_connection_is_ignored() -> None:
    other = initial(crypto(0, b"other"), dcid=b"\x99" * 8)
    result = parse_quic_initials(initial(crypto(0, b"mine")) + other)
    assert isinstance(result, tuple) and [r.crypto for r in result] == [((0, b"mine"),)]


def test_trailing_zero_padding_after_the_initial_is_ignored() -> None:
    assert only(parse_quic_initials(initial(crypto(0, b"x")) + bytes(100))).crypto == ((0, b"x"),)


def test_t051_initial_uses_gquic_frame_numbering() -> None:
    # gQUIC CRYPTO is 0x08 (0x08 is STREAM in IETF QUIC); an ACK (0x40..) ends the walk.
    payload = bytes.fromhex("07") + b"\x08" + encode_varint(0) + encode_varint(5) + b"hello" + bytes.fromhex("4001108c")
    rec = only(parse_quic_initials(initial(payload, VERSION_T051)))
    assert rec.crypto == ((0, b"hello"),)


# ---------------------------------------------------------------------------
# Keys from another DCID (RFC 9001 §5.2) and GREASE probes
# ---------------------------------------------------------------------------


def test_later_initial_with_server_chosen_dcid_needs_key_dcid() -> None:
    server_cid = bytes.fromhex("0164bccb0bceb2de8f64afc9a9cea6a36437ab44")
    later = initial(crypto(1000, b"tail"), dcid=server_cid, pn=1, key_dcid=DCID)
    assert parse_quic_initials(later) == quic.DECRYPT_FAILED
    rec = only(parse_quic_initials(later, key_dcid=DCID))
    assert (rec.dcid, rec.key_dcid, rec.crypto) == (server_cid, DCID, ((1000, b"tail"),))


def test_own_dcid_is_tried_when_key_dcid_fails() -> None:
    # After a Retry the client's new DCID is the new key; a stale key_dcid must not hide it.
    rec = only(parse_quic_initials(initial(crypto(0, b"ch")), key_dcid=b"stale-cid"))
    assert rec.key_dcid == DCID


@pytest.mark.parametrize("key_version", [VERSION_1, DRAFT_29])
def test_grease_version_initial_opens_with_v1_or_draft29_keys(key_version: int) -> None:
    packet = reseal(initial(crypto(0, b"probe"), key_version), key_version, version=0x5A6A7A8A)
    rec = only(parse_quic_initials(packet))
    assert (rec.version, rec.crypto) == (0x5A6A7A8A, ((0, b"probe"),))


# ---------------------------------------------------------------------------
# One test per anomaly name
# ---------------------------------------------------------------------------


def test_anomaly_truncated_header() -> None:
    assert parse_quic_initials(bytes.fromhex("c0000000")) == quic.TRUNCATED


def test_anomaly_truncated_length_field() -> None:
    assert parse_quic_initials(initial(crypto(0, b"x"))[:-1]) == quic.TRUNCATED


def test_anomaly_truncated_sample() -> None:
    # A valid-looking header whose Length leaves no room for the 16-byte sample.
    short = bytes.fromhex("c00000000108") + DCID + bytes.fromhex("000005") + bytes(5)
    assert parse_quic_initials(short) == quic.TRUNCATED


def test_anomaly_cid_too_long() -> None:
    assert parse_quic_initials(bytes.fromhex("c00000000115") + bytes(40)) == quic.CID_TOO_LONG


def test_anomaly_unknown_version() -> None:
    assert parse_quic_initials(bytes.fromhex("c0deadbeef08") + bytes(40)) == quic.UNKNOWN_VERSION


def test_anomaly_decrypt_failed() -> None:
    packet = bytearray(initial(crypto(0, b"x")))
    packet[200] ^= 0x80
    assert parse_quic_initials(bytes(packet)) == quic.DECRYPT_FAILED


def test_anomaly_reserved_bits() -> None:
    assert parse_quic_initials(reseal(initial(crypto(0, b"x")), first_or=0x04)) == quic.RESERVED_BITS


@pytest.mark.parametrize(
    "payload",
    [crypto(0, b"abc")[:-1], b"\x06\x00", b"\x06\x80", ACK[:3], b"\x02\x00\x00\x7f\x00\x00", CLOSE[:-1]],
    ids=["crypto-data", "crypto-length", "crypto-varint", "ack", "ack-range-count", "close-reason"],
)
def test_anomaly_frame_truncated(payload: bytes) -> None:
    # A 4-byte packet number needs no sample padding, so the frame really ends the payload.
    packet = protect_initial(VERSION_1, DCID, SCID, 0, payload, pn_len=4)
    assert parse_quic_initials(packet) == quic.FRAME_TRUNCATED


@pytest.mark.parametrize("ftype", [0x04, 0x07, 0x08, 0x0F, 0x18, 0x1E, 0x40])
def test_anomaly_frame_not_allowed(ftype: int) -> None:
    # RESET_STREAM, NEW_TOKEN, STREAM, ..., NEW_CONNECTION_ID, HANDSHAKE_DONE, 2-byte types.
    assert parse_quic_initials(initial(crypto(0, b"x") + bytes((ftype,)) + bytes(8))) == quic.FRAME_NOT_ALLOWED


def test_anomaly_crypto_limit() -> None:
    assert only(parse_quic_initials(initial(crypto(MAX_CRYPTO_END - 1, b"x")))).crypto == ((MAX_CRYPTO_END - 1, b"x"),)
    assert parse_quic_initials(initial(crypto(MAX_CRYPTO_END - 1, b"xy"))) == quic.CRYPTO_LIMIT


def test_anomaly_too_many_crypto_frames() -> None:
    ok = b"".join(crypto(i, b"x") for i in range(MAX_CRYPTO_FRAMES))
    assert len(only(parse_quic_initials(initial(ok))).crypto) == MAX_CRYPTO_FRAMES
    assert parse_quic_initials(initial(ok + crypto(99, b"y"))) == quic.TOO_MANY_CRYPTO_FRAMES


def test_anomaly_too_many_packets() -> None:
    assert parse_quic_initials(long_packet(2, b"h") * MAX_COALESCED_PACKETS) == ()
    assert parse_quic_initials(long_packet(2, b"h") * (MAX_COALESCED_PACKETS + 1)) == quic.TOO_MANY_PACKETS


def test_every_anomaly_constant_is_documented() -> None:
    constants = {v.kind for v in vars(quic).values() if isinstance(v, Anomaly)}
    assert constants == set(quic.ANOMALIES)
    assert all(kind.startswith("quic.") for kind in constants)


def test_an_anomaly_in_a_later_packet_keeps_the_decrypted_initial() -> None:
    datagram = initial(crypto(0, b"ok")) + bytes.fromhex("c00000000115") + bytes(30)
    assert only(parse_quic_initials(datagram)).crypto == ((0, b"ok"),)


# ---------------------------------------------------------------------------
# assemble_crypto
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([], b""),
        ([(1, b"bc")], b""),  # offset 0 missing
        ([(0, b"ab"), (4, b"ef")], b"ab"),  # gap at 2
        ([(2, b"cd"), (0, b"ab")], b"abcd"),  # out of order
        ([(0, b"abc"), (1, b"bcde"), (0, b"a")], b"abcde"),  # overlaps and duplicates
        ([(0, b"abcdef"), (2, b"cd")], b"abcdef"),  # a chunk inside another
        ([(0, b""), (0, b"a")], b"a"),  # empty CRYPTO frame
    ],
    ids=["empty", "no-offset-0", "gap", "unordered", "overlap", "contained", "empty-chunk"],
)
def test_assemble_crypto_returns_the_contiguous_prefix(chunks: list[tuple[int, bytes]], expected: bytes) -> None:
    assert assemble_crypto(chunks) == expected


# ---------------------------------------------------------------------------
# Property tests: never raise; any segmentation reassembles
# ---------------------------------------------------------------------------

RESULT_TYPES = (tuple, Anomaly, type(None))
_VERSIONS = st.sampled_from([VERSION_1, VERSION_2, DRAFT_29, MVFST_27, VERSION_T051, 0x1A2A3A4A, 0, 0xDEADBEEF])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_quic_initials(data), RESULT_TYPES)


@settings(max_examples=300, deadline=None)
@given(first=st.integers(0x80, 0xFF), version=_VERSIONS, rest=st.binary(max_size=200))
def test_random_long_headers_never_raise(first: int, version: int, rest: bytes) -> None:
    data = bytes((first,)) + version.to_bytes(4, "big") + rest
    assert isinstance(parse_quic_initials(data, key_dcid=rest[:8]), RESULT_TYPES)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([VERSION_1, VERSION_2, VERSION_T051]), payload=st.binary(min_size=1, max_size=120))
def test_random_decrypted_payloads_never_raise(version: int, payload: bytes) -> None:
    # Properly protected, so the frame walker (not just the AEAD) sees the random bytes.
    packet = protect_initial(version, DCID, SCID, 0, payload)
    assert isinstance(parse_quic_initials(packet), RESULT_TYPES)


_VALID = initial(ACK + crypto(0, RFC_CLIENT_HELLO)) + long_packet(2, bytes(40))


@settings(max_examples=300, deadline=None)
@given(mutations(_VALID))
def test_mutated_datagrams_never_raise(data: bytes) -> None:
    assert isinstance(parse_quic_initials(data), RESULT_TYPES)


@settings(max_examples=60, deadline=None)
@given(
    hello=st.one_of(st.just(RFC_CLIENT_HELLO), st.binary(min_size=1, max_size=3000)),
    version=st.sampled_from([VERSION_1, VERSION_2, DRAFT_29]),
    seed=st.integers(0, 2**32 - 1),
    pieces=st.integers(1, 24),
    packets=st.integers(1, 4),
)
def test_any_segmentation_order_and_duplication_reassembles_the_handshake(
    hello: bytes, version: int, seed: int, pieces: int, packets: int
) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(hello)), min(pieces - 1, len(hello) - 1)))
    chunks = [(a, hello[a:b]) for a, b in zip([0, *cuts], [*cuts, len(hello)])]
    chunks += rng.sample(chunks, rng.randint(0, len(chunks)))  # retransmitted duplicates
    rng.shuffle(chunks)
    groups: list[list[bytes]] = [[] for _ in range(packets)]
    for off, piece in chunks:
        frames = groups[rng.randrange(packets)]
        frames.append(rng.choice([b"", PING, bytes(rng.randint(1, 9))]) + crypto(off, piece))
    datagrams = [initial(b"".join(f) + PING, version, pn=pn) for pn, f in enumerate(groups)]
    rng.shuffle(datagrams)
    seen: list[tuple[int, bytes]] = []
    for datagram in datagrams:
        seen.extend(only(parse_quic_initials(datagram)).crypto)
    assert assemble_crypto(seen) == hello


# ---------------------------------------------------------------------------
# Real captures: every client Initial decrypts; the SNIs match tshark's
# ---------------------------------------------------------------------------

# Files where tshark 4.0 is not the reference for this decoder:
# gQUIC Q039/Q043/Q046/Q050 carry a QUIC-crypto CHLO, not a TLS ClientHello (names in
# sni_gquic); tcpdump's quic_vn sends its ClientHello under a GREASE version first and
# again as v1, and tshark shows neither.
_EXTRA_NAMES = {"tricky/tcpdump__quic_vn.pcap": {"localhost"}}


def _quic_capture_files() -> list[str]:
    if not (CAPTURES / "GROUND_TRUTH.json").is_file():
        return []
    truth = json.loads((CAPTURES / "GROUND_TRUTH.json").read_text())
    return sorted(name for name, t in truth.items() if t.get("sni_quic") or "quic" in name.lower())


def _client_initials(path) -> Iterator[tuple[tuple[bytes, int, bytes, int], QuicInitial | Anomaly]]:  # type: ignore[no-untyped-def]
    """Decode UDP datagrams the way the flows stage should: client side only, key_dcid carried."""
    clients: dict[frozenset[tuple[bytes, int]], tuple[bytes, int]] = {}
    keys: dict[frozenset[tuple[bytes, int]], bytes] = {}
    for proto, src, dst, sport, dport, _seq, payload in segments(path):
        if proto != 17:
            continue
        pair = frozenset(((src, sport), (dst, dport)))
        client = clients.get(pair)
        if client is not None and client != (src, sport):
            continue  # the server's side: its Initials use the server keys
        result = parse_quic_initials(payload, key_dcid=keys.get(pair))
        if isinstance(result, tuple):
            for rec in result:
                clients[pair] = (src, sport)
                keys[pair] = rec.key_dcid
                yield (src, sport, dst, dport), rec
        elif isinstance(result, Anomaly) and client is not None:
            yield (src, sport, dst, dport), result


@pytest.mark.parametrize("name", _quic_capture_files() or ["<no captures>"])
def test_real_capture_client_initials_decrypt_and_give_tsharks_sni(name: str) -> None:
    truth = require_captures()[name]
    chunks: dict[tuple[bytes, int, bytes, int], list[tuple[int, bytes]]] = {}
    anomalies = []
    for conn, rec in _client_initials(CAPTURES / name):
        if isinstance(rec, Anomaly):
            anomalies.append(rec.kind)
        else:
            chunks.setdefault(conn, []).extend(rec.crypto)
    assert anomalies == []
    names = set()
    for conn_chunks in chunks.values():
        if not any(off == 0 for off, _ in conn_chunks):
            continue  # only ACK-bearing Initials seen for this flow
        hello = parse_client_hello_handshake(assemble_crypto(conn_chunks), transport="q")
        assert isinstance(hello, ClientHello), hello
        assert hello.ja4.startswith("q")
        if hello.sni:
            names.add(hello.sni)
    expected = set(truth["sni_quic"]) - set(truth["sni_gquic"])
    assert names == expected | _EXTRA_NAMES.get(name, set())
