"""Google QUIC CHLO decoding: Q025/Q039/Q043 public header, Q046 long header, Q050 Initials, real captures."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from _app_helpers import CAPTURES, capture_names, check_result, mutations, require_captures, segments, unhex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.decode import quic_crypto
from detector.decode.gquic import ANOMALIES, MAX_CHLO_TAGS, MAX_FRAMES, parse_gquic_chlo
from detector.decode.quic import parse_quic_initials
from detector.decode.quic_crypto import (
    VERSION_Q050,
    VERSION_T050,
    encode_varint,
    initial_keys,
    protect_initial,
    q050_initial_keys,
)
from detector.model import Anomaly, ClientHello, NeedMore

Q025, Q039, Q043, Q046 = (int.from_bytes(v, "big") for v in (b"Q025", b"Q039", b"Q043", b"Q046"))
DCID = bytes.fromhex("df4a089e4eff5e7a")

# ---------------------------------------------------------------------------
# Annotated packets
# ---------------------------------------------------------------------------

# The CHLO message shared by the annotated packets (51 bytes).
CHLO = unhex("""
    43484c4f                          # message tag "CHLO"
    0300 0000                         # 3 entries (u16 little-endian), 2 bytes padding
    50414400 04000000                 # "PAD\\0", value ends at offset 4 (u32 little-endian)
    534e4900 0f000000                 # "SNI\\0", value ends at 15
    56455200 13000000                 # "VER\\0", value ends at 19
    2d2d2d2d                          # PAD value "----"
    4578616d706c652e636f6d            # SNI value "Example.com"
    51303339                          # VER value "Q039"
""")

Q039_PACKET = (
    unhex("""
    0d                                # public flags: version (0x01), 8-byte CID (0x0c), 1-byte packet number
    e71ad5d7756c4d4d                  # connection ID
    51303339                          # version "Q039"
    01                                # packet number 1
    699b9f009c99d068752a7e01          # message authentication hash (FNV-1a-128, 12 bytes; not checked)
    a0                                # STREAM: data length present, no offset, 1-byte stream ID
    01                                # stream 1 (crypto handshake)
    0033                              # data length 51 (big-endian from Q039 on)
""")
    + CHLO
)

Q025_PACKET = (
    unhex("""
    0d                                # public flags: version, 8-byte CID, 1-byte packet number
    49bee2d3f0edccd6                  # connection ID
    51303235                          # version "Q025"
    01                                # packet number 1
    d8697e21ab650d33f17a3cf3          # message authentication hash
    00                                # private flags (before Q034)
    a0 01                             # STREAM, stream 1
    3300                              # data length 51 (little-endian before Q039)
""")
    + CHLO
)

Q043_PACKET_AFTER_ACK = (
    unhex("""
    1d                                # public flags: version, 8-byte CID, 2-byte packet number (0x10)
    0102030405060708                  # connection ID
    51303433                          # version "Q043"
    0003                              # packet number 3
    000000000000000000000000          # message authentication hash
    60                                # ACK: ranges present (0x20), 1-byte largest acked, 1-byte blocks
    02 0010                           #   largest acked 2, ack delay
    01 01 01 01                       #   1 extra block; first block 1; gap 1, block 1
    01 01 00000001                    #   1 timestamp: delta 1, time since largest acked
    06 0001                           # STOP_WAITING: least unacked delta (packet number length)
    07                                # PING
    a4                                # STREAM: data length, 2-byte offset (0x04), 1-byte stream ID
    01 0400                           #   stream 1, offset 1024 (a second CHLO after a REJ)
    0033                              #   data length 51
""")
    + CHLO
)

Q046_PACKET = (
    unhex("""
    c3                                # long header, fixed bit, type 0, 4-byte packet number
    51303436                          # version "Q046"
    50                                # DCID length nibble 5 (+3 = 8), SCID absent
    eacfe6e706df272d                  # destination connection ID
    00000001                          # packet number 1
    60da58929f6839d0860efc58          # message authentication hash
    a0 01 0033                        # STREAM: stream 1, data length 51
""")
    + CHLO
)

# Q050's decrypted Initial payload: gQUIC frames, CRYPTO (0x08) with RFC 9000 varints.
Q050_FRAMES = (
    unhex("""
    08                                # CRYPTO
    00                                # offset 0
    33                                # length 51
""")
    + CHLO
    + bytes(1100)  # PADDING
)


def q050_initial(payload: bytes, dcid: bytes = DCID, scid: bytes = b"", pn: int = 1) -> bytes:
    """A Q050 client Initial: protect_initial's IETF layout under the Q050 keys."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quic_crypto, "initial_keys", lambda _version, cid, _client=True: q050_initial_keys(cid))
        return protect_initial(VERSION_Q050, dcid, scid, pn, payload)


Q050_PACKET = q050_initial(Q050_FRAMES)


def chlo(*entries: tuple[bytes, bytes], count: int | None = None) -> bytes:
    """A CHLO message with these (tag, value) entries; `count` overrides the announced entry count."""
    table, values = b"", b""
    for tag, value in entries:
        values += value
        table += tag + struct.pack("<I", len(values))
    return b"CHLO" + struct.pack("<HH", len(entries) if count is None else count, 0) + table + values


def q039(message: bytes, frames: bytes = b"", stream: int = 1, version: bytes = b"Q039") -> bytes:
    """A Q039-style public-header packet: `frames`, then `message` in a STREAM frame on `stream`."""
    return (
        b"\x0d"
        + bytes(range(8))
        + version
        + b"\x01"
        + bytes(12)
        + frames
        + bytes((0xA0, stream))
        + struct.pack("!H", len(message))
        + message
    )


EXPECTED = ClientHello(sni="example.com", alpn=(), versions=(Q039,), ech=False, ja4="")


# ---------------------------------------------------------------------------
# One packet per layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "version"),
    [
        (Q039_PACKET, Q039),
        (Q025_PACKET, Q025),
        (Q043_PACKET_AFTER_ACK, Q043),
        (Q046_PACKET, Q046),
        (Q050_PACKET, VERSION_Q050),
    ],
    ids=["q039", "q025-little-endian-private-flags", "q043-after-ack-stop-waiting-ping", "q046", "q050"],
)
def test_chlo_gives_the_lower_cased_sni_and_the_packet_version(packet: bytes, version: int) -> None:
    assert parse_gquic_chlo(packet) == ClientHello(sni="example.com", alpn=(), versions=(version,), ech=False, ja4="")


def test_q050_chlo_after_an_ack_frame_is_found() -> None:
    ack = unhex("40 03 1639 03 00")  # ACK: largest acked 3, delay, first block 3, no timestamps
    packet = q050_initial(ack + Q050_FRAMES)
    assert parse_gquic_chlo(packet) == ClientHello("example.com", (), (VERSION_Q050,), False, "")


def test_q050_second_chlo_at_a_later_crypto_offset_is_read_like_tshark() -> None:
    frames = b"\x08" + encode_varint(1024, 2) + encode_varint(len(CHLO)) + CHLO + bytes(1000)
    assert parse_gquic_chlo(q050_initial(frames)) == ClientHello("example.com", (), (VERSION_Q050,), False, "")


def test_chlo_without_sni_tag_gives_no_name() -> None:
    result = parse_gquic_chlo(q039(chlo((b"PAD\x00", b"--"), (b"VER\x00", b"Q039"))))
    assert result == ClientHello(sni=None, alpn=(), versions=(Q039,), ech=False, ja4="")


def test_sni_trailing_dot_is_removed() -> None:
    assert parse_gquic_chlo(q039(chlo((b"SNI\x00", b"WWW.Example.org.")))).sni == "www.example.org"  # type: ignore[union-attr]


def test_first_sni_tag_wins() -> None:
    message = chlo((b"SNI\x00", b"a.example"), (b"SNI\x00", b"b.example"))
    assert parse_gquic_chlo(q039(message)).sni == "a.example"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# Not a CHLO packet: None
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes.fromhex("43c0ffee0102030405") + bytes(100),  # IETF short header
        bytes.fromhex("0c") + bytes(8) + bytes(60),  # gQUIC without version flag (after the handshake)
        q039(CHLO, version=b"T039"),  # not a "Q0" version
        q039(CHLO, version=b"Q0a9"),  # not digits
        q039(CHLO, version=b"Q046"),  # Q044+ never use the public header
        q039(CHLO, stream=5),  # a CHLO tag on a data stream
        q039(b"SHLO" + CHLO[4:]),  # not a client hello
        bytes.fromhex("0d") + bytes(8) + b"Q039\x02" + bytes(range(200)),  # encrypted payload
        bytes.fromhex("c35430353008") + bytes(1300),  # T050: decoded by quic as TLS
        bytes.fromhex("c351303530") + bytes(1300),  # Q050 with an empty DCID: a server's Initial
        bytes.fromhex("d35130353008") + DCID + bytes(1300),  # Q050 0-RTT
        bytes.fromhex("c3ff00001d08") + bytes(1300),  # IETF draft-29
    ],
    ids=[
        "empty",
        "short-header",
        "no-version-flag",
        "not-q-version",
        "not-digits",
        "q046-in-public-header",
        "data-stream",
        "shlo",
        "encrypted",
        "t050",
        "q050-server-initial",
        "q050-0rtt",
        "ietf-draft",
    ],
)
def test_not_a_chlo_packet_returns_none(payload: bytes) -> None:
    assert parse_gquic_chlo(payload) is None


def test_padding_before_the_chlo_is_a_zero_run_from_q038() -> None:
    assert parse_gquic_chlo(q039(CHLO, frames=b"\x00\x00")) == EXPECTED


def test_padding_fills_the_rest_of_the_packet_up_to_q037() -> None:
    assert parse_gquic_chlo(q039(CHLO, frames=b"\x00", version=b"Q035")) is None


def test_more_frames_than_max_frames_before_the_chlo_returns_none() -> None:
    assert parse_gquic_chlo(q039(CHLO, frames=b"\x07" * (MAX_FRAMES - 1))) == EXPECTED
    assert parse_gquic_chlo(q039(CHLO, frames=b"\x07" * MAX_FRAMES)) is None


def test_gquic_packets_are_none_for_the_ietf_decoder_that_runs_first() -> None:
    for packet in (Q039_PACKET, Q046_PACKET, Q050_PACKET):
        assert parse_quic_initials(packet) is None


# ---------------------------------------------------------------------------
# Broken or split CHLOs
# ---------------------------------------------------------------------------


def test_sni_value_in_a_later_packet_needs_more() -> None:
    message = chlo((b"PAD\x00", b"-" * 40), (b"SNI\x00", b"example.com"))
    assert parse_gquic_chlo(q039(message[:-5])) == NeedMore(len(message))


def test_tag_table_cut_short_needs_more() -> None:
    message = chlo((b"SNI\x00", b"example.com"), (b"VER\x00", b"Q039"))
    assert parse_gquic_chlo(q039(message[:20])) == NeedMore(8 + 2 * 8)
    assert parse_gquic_chlo(q039(message[:6])) == NeedMore(0)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (chlo((b"SNI\x00", b"x"), count=MAX_CHLO_TAGS + 1) + bytes(8 * MAX_CHLO_TAGS), "gquic.chlo_too_many_tags"),
        (b"CHLO\x02\x00\x00\x00SNI\x00\x08\x00\x00\x00VER\x00\x04\x00\x00\x00" + b"a.example", "gquic.chlo_bad_offset"),
        (chlo((b"SNI\x00", b"")), "gquic.sni_malformed"),
        (chlo((b"SNI\x00", b"bad name")), "gquic.sni_malformed"),
        (chlo((b"SNI\x00", b"a" * 254)), "gquic.sni_too_long"),
    ],
    ids=["too-many-tags", "decreasing-offset", "empty-sni", "space-in-sni", "sni-too-long"],
)
def test_broken_chlo_is_a_named_anomaly(message: bytes, kind: str) -> None:
    assert parse_gquic_chlo(q039(message)) == Anomaly(kind)
    assert kind in ANOMALIES


def test_q050_initial_that_fails_authentication_is_an_anomaly() -> None:
    broken = bytearray(Q050_PACKET)
    broken[-1] ^= 0x01
    assert parse_gquic_chlo(bytes(broken)) == Anomaly("gquic.decrypt_failed")


def test_q050_initial_cut_short_is_truncated() -> None:
    assert parse_gquic_chlo(Q050_PACKET[:-1]) == Anomaly("gquic.truncated")
    assert parse_gquic_chlo(Q050_PACKET[:16]) == Anomaly("gquic.truncated")


def test_q050_keys_are_apart_from_the_ietf_table() -> None:
    assert initial_keys(VERSION_Q050, DCID) is None
    assert q050_initial_keys(DCID) != initial_keys(VERSION_T050, DCID)


# ---------------------------------------------------------------------------
# Real captures: tshark 4.0's gquic.tag.sni, frame for frame
# ---------------------------------------------------------------------------

GQUIC_CAPTURES = [
    "tricky/ndpi__gquic.pcap",  # Q050
    "tricky/ndpi__quic_q39.pcap",
    "tricky/ndpi__quic_q46.pcap",
    "tricky/ndpi__quic_q50.pcap",  # two CHLOs (before and after the REJ)
    "tricky/ndpi__http_ipv6.pcap",  # Q025 over IPv6
]


def _names(name: str) -> tuple[Counter[str | None], list[object]]:
    names: Counter[str | None] = Counter()
    others = []
    for proto, *_, payload in segments(CAPTURES / name):
        if proto != 17:
            continue
        result = parse_gquic_chlo(payload)
        if isinstance(result, ClientHello):
            names[result.sni] += 1
        elif result is not None:
            others.append(result)
    return names, others


@pytest.mark.parametrize("name", GQUIC_CAPTURES)
def test_gquic_captures_give_tsharks_sni_per_frame(name: str) -> None:
    truth = require_captures()[name]
    names, others = _names(name)
    assert names == Counter(truth["sni_gquic"])
    assert others == []


@pytest.mark.parametrize("name", [n for n in capture_names() if n not in GQUIC_CAPTURES])
def test_other_captures_give_no_gquic_name_and_no_anomaly(name: str) -> None:
    truth = require_captures()[name]
    names, others = _names(name)
    assert names == Counter(truth.get("sni_gquic", {}))
    assert others == []


# ---------------------------------------------------------------------------
# Never raises
# ---------------------------------------------------------------------------

VALID = [Q039_PACKET, Q025_PACKET, Q043_PACKET_AFTER_ACK, Q046_PACKET, Q050_PACKET]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_result(parse_gquic_chlo(data), ClientHello, ANOMALIES)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            b"\x0d" + bytes(8) + b"Q039\x01" + bytes(12),
            b"\x09" + bytes(8) + b"Q025\x01" + bytes(13),
            bytes.fromhex("c35130343650") + bytes(12 + 4),
        ]
    ),
    st.binary(max_size=400),
)
def test_random_frames_after_a_valid_header_never_raise(header: bytes, frames: bytes) -> None:
    check_result(parse_gquic_chlo(header + frames), ClientHello, ANOMALIES)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID).flatmap(mutations))
def test_mutated_packets_never_raise(data: bytes) -> None:
    check_result(parse_gquic_chlo(data), ClientHello, ANOMALIES)
