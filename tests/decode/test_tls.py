"""TLS ClientHello decoder: annotated records, reassembly over records and segments, anomalies, properties."""

from __future__ import annotations


import pytest
from _app_helpers import (
    CAPTURES,
    GREASE_A,
    capture_names,
    check_result,
    client_hello,
    ext,
    mutations,
    require_captures,
    segments,
    tcp_streams,
    tls_records,
    u16s,
    unhex,
    vec,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decode import tls
from detector.decode.tls import ANOMALIES, parse_client_hello_handshake, parse_tls_client_hello
from detector.model import Anomaly, ClientHello, NeedMore

# A minimal TLS 1.2 ClientHello for "a.io", in one record.
MINIMAL = unhex("""
    16 0301 0044                 # record: handshake, record version TLS 1.0, 68 bytes
    01 000040                    # ClientHello, 64 bytes
    0303                         # legacy_version TLS 1.2
    00000000000000000000000000000000 00000000000000000000000000000000  # random
    00                           # session id: empty
    0002 c02f                    # cipher suites: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    01 00                        # compression methods: null
    0015                         # extensions: 21 bytes
    0000 0009 0007 00 0004 612e696f   # server_name: list of 7, host_name(0) of 4: "a.io"
    000d 0004 0002 0401          # signature_algorithms: rsa_pkcs1_sha256
""")

CHROME_PQ = client_hello()  # ~1.5 kB: GREASE, X25519MLKEM768 key share, ALPN h2/http1.1


def test_minimal_client_hello_fields_and_ja4() -> None:
    # ja4_b = sha256("c02f")[:12]; ja4_c = sha256("000d_0401")[:12] (SNI is not hashed)
    assert parse_tls_client_hello(MINIMAL) == ClientHello(
        sni="a.io", alpn=(), versions=(0x0303,), ech=False, ja4="t12d010200_f06271c2b022_032c60bb0d32"
    )


def test_chrome_like_post_quantum_hello_in_one_record() -> None:
    assert len(CHROME_PQ) > 1500
    hello = parse_tls_client_hello(tls_records(CHROME_PQ))
    assert isinstance(hello, ClientHello)
    assert hello.sni == "example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.versions == (0x0304, 0x0303)  # GREASE removed
    assert not hello.ech
    assert hello.ja4.startswith("t13d1515h2_8daaf6152771_")


@pytest.mark.parametrize("fragment", [1, 3, 100, 512, 1400])
def test_handshake_spread_over_several_records_gives_the_same_hello(fragment: int) -> None:
    assert parse_tls_client_hello(tls_records(CHROME_PQ, fragment)) == parse_client_hello_handshake(CHROME_PQ)


def test_every_prefix_of_a_multi_record_stream_needs_more_or_gives_the_hello() -> None:
    stream = tls_records(CHROME_PQ, 600) + b"\x14\x03\x03\x00\x01\x01"  # + ChangeCipherSpec
    hello = parse_client_hello_handshake(CHROME_PQ)
    first_complete = None
    for cut in range(len(stream) + 1):
        result = parse_tls_client_hello(stream[:cut])
        if isinstance(result, NeedMore):
            assert first_complete is None and result.needed > cut
            continue
        assert result == hello, cut
        first_complete = first_complete or cut
    # The hello is ready once its last byte arrived, before the end of its last record.
    assert first_complete == len(tls_records(CHROME_PQ, 600))


def test_needmore_counts_are_lower_bounds() -> None:
    stream = tls_records(CHROME_PQ, 600)
    assert parse_tls_client_hello(b"") == NeedMore(5)
    assert parse_tls_client_hello(stream[:3]) == NeedMore(5)
    assert parse_tls_client_hello(stream[:5]) == NeedMore(5 + 4)  # the handshake header
    assert parse_tls_client_hello(stream[:100]) == NeedMore(605)  # the end of record 1
    assert parse_tls_client_hello(stream[:605]) == NeedMore(605 + 5 + len(CHROME_PQ) - 600)


def test_ech_outer_hello_keeps_the_outer_sni() -> None:
    hello = parse_tls_client_hello(tls_records(client_hello(sni="cloudflare-ech.com", ech=True)))
    assert isinstance(hello, ClientHello) and hello.ech and hello.sni == "cloudflare-ech.com"


def test_hello_without_sni_has_no_name_and_ja4_marks_ip() -> None:
    hello = parse_tls_client_hello(tls_records(client_hello(sni=None)))
    assert isinstance(hello, ClientHello) and hello.sni is None and hello.ja4[3] == "i"


def test_sni_is_lower_cased_and_loses_a_trailing_dot() -> None:
    hello = parse_client_hello_handshake(client_hello(sni="Chat.OpenAI.com."))
    assert isinstance(hello, ClientHello) and hello.sni == "chat.openai.com"


def test_sslv3_hello_without_extensions() -> None:
    hs = client_hello(legacy_version=0x0300, extensions=False, ciphers=(0x000A, 0x0005))
    hello = parse_tls_client_hello(tls_records(hs, version=0x0300))
    assert isinstance(hello, ClientHello)
    assert hello.versions == (0x0300,) and hello.sni is None and hello.alpn == ()
    assert hello.ja4.startswith("ts3i0200") and hello.ja4.endswith("_000000000000")


def test_supported_versions_of_only_grease_give_no_version() -> None:
    hello = parse_client_hello_handshake(client_hello(versions=(GREASE_A,)))
    assert isinstance(hello, ClientHello) and hello.versions == () and hello.ja4[1:3] == "00"


def test_quic_transport_letter() -> None:
    hello = parse_client_hello_handshake(client_hello(), "q")
    assert isinstance(hello, ClientHello) and hello.ja4.startswith("q13d")


def test_bare_handshake_prefixes_need_more() -> None:
    assert parse_client_hello_handshake(b"") == NeedMore(4)
    assert parse_client_hello_handshake(CHROME_PQ[:2]) == NeedMore(4)
    assert parse_client_hello_handshake(CHROME_PQ[:100]) == NeedMore(len(CHROME_PQ))


@pytest.mark.parametrize(
    "stream",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x02\x00\x00\x10",  # record version 2.0
        b"\x16\x03\x07",  # record version 3.7
        tls_records(b"\x02\x00\x00\x04\x03\x03\x00\x00"),  # ServerHello: the other direction
    ],
)
def test_streams_that_are_not_a_client_hello_give_none(stream: bytes) -> None:
    assert parse_tls_client_hello(stream) is None


def test_bare_server_hello_gives_none() -> None:
    assert parse_client_hello_handshake(b"\x02\x00\x00\x04\x03\x03\x00\x00") is None


# --- anomalies ------------------------------------------------------------------------------


def _with_ext(*extra: bytes) -> bytes:
    """A small TLS 1.3 hello whose extension block is `extra` (after supported_versions)."""
    exts = ext(0x002B, vec(1, u16s((0x0304,)))) + b"".join(extra)
    body = b"\x03\x03" + bytes(32) + b"\x00" + vec(2, u16s((0x1301,))) + b"\x01\x00" + vec(2, exts)
    return tls_records(b"\x01" + vec(3, body))


def _body(body: bytes) -> bytes:
    return tls_records(b"\x01" + vec(3, body))


HEAD = b"\x03\x03" + bytes(32)  # legacy_version, random

ANOMALY_STREAMS = {
    "tls.sslv2_hello": unhex("80 2e 01 0301 0015 0000 0010  0000ff 000035 c02f00 0a0b0c0d"),
    "tls.bad_record_version": tls_records(CHROME_PQ[:100]) + b"\x16\x02\x01\x00\x10",
    "tls.record_too_long": b"\x16\x03\x01\x40\x01\x01",
    "tls.record_empty": b"\x16\x03\x01\x00\x00",
    "tls.record_interleaved": tls_records(CHROME_PQ[:100]) + b"\x17\x03\x03\x00\x10",
    "tls.not_client_hello": tls_records(b"\x0b\x00\x00\x00"),  # Certificate first
    "tls.handshake_too_long": b"\x16\x03\x01\x00\x04\x01\x01\x00\x01",
    "tls.body_truncated": _body(HEAD[:20]),
    "tls.session_id_too_long": _body(HEAD + vec(1, bytes(33))),
    "tls.cipher_suites_malformed": _body(HEAD + b"\x00" + vec(2, b"\x13\x01\x13")),  # odd length
    "tls.compression_malformed": _body(HEAD + b"\x00" + vec(2, b"\x13\x01") + b"\x05\x00"),
    "tls.ext_len_overflow": _body(HEAD + b"\x00" + vec(2, b"\x13\x01") + b"\x01\x00" + b"\x00\x20\x00\x00"),
    "tls.trailing_data": _body(HEAD + b"\x00" + vec(2, b"\x13\x01") + b"\x01\x00" + vec(2, b"") + b"\x00"),
    "tls.ext_duplicate": _with_ext(ext(0x0017, b""), ext(0x0017, b"")),
    "tls.sni_malformed": _with_ext(ext(0x0000, vec(2, b"\x00" + vec(2, b"bad host")))),
    "tls.sni_too_long": _with_ext(ext(0x0000, vec(2, b"\x00" + vec(2, b"a" * 254)))),
    "tls.alpn_malformed": _with_ext(ext(0x0010, vec(2, b"\x02h2\x00"))),  # empty protocol name
    "tls.versions_malformed": tls_records(
        b"\x01" + vec(3, HEAD + b"\x00" + vec(2, b"\x13\x01") + b"\x01\x00" + vec(2, ext(0x002B, b"\x03\x03\x04\x03")))
    ),
    "tls.sigalgs_malformed": _with_ext(ext(0x000D, vec(2, b"\x04\x03\x08"))),
}


@pytest.mark.parametrize("kind", sorted(ANOMALY_STREAMS))
def test_each_anomaly_is_named(kind: str) -> None:
    assert parse_tls_client_hello(ANOMALY_STREAMS[kind]) == Anomaly(kind)


def test_every_declared_anomaly_has_a_test() -> None:
    assert set(ANOMALY_STREAMS) == set(ANOMALIES)


@pytest.mark.parametrize(
    "sni_list",
    [
        b"",  # an empty extension
        vec(2, b"\x00" + vec(2, b"")),  # an empty host name
        vec(2, b"\x00\x00\x09abc"),  # host name longer than the list
        vec(2, b"\x00" + vec(2, b"a.io")) + b"\x00",  # a byte after the list
        vec(2, b"\x00" + vec(2, "bücher.de".encode())),  # not ASCII (must be an A-label)
    ],
)
def test_malformed_server_name_lists(sni_list: bytes) -> None:
    assert parse_tls_client_hello(_with_ext(ext(0x0000, sni_list))) == tls.SNI_MALFORMED


def test_other_name_types_are_skipped() -> None:
    names = vec(2, b"\x01" + vec(2, b"\xff\xfe") + b"\x00" + vec(2, b"Real.example"))
    hello = parse_tls_client_hello(_with_ext(ext(0x0000, names)))
    assert isinstance(hello, ClientHello) and hello.sni == "real.example"


def test_non_ascii_alpn_is_kept_escaped() -> None:
    hello = parse_tls_client_hello(_with_ext(ext(0x0010, vec(2, vec(1, b"\xab\xcd") + vec(1, b"h2")))))
    assert isinstance(hello, ClientHello) and hello.alpn == ("\\xab\\xcd", "h2") and hello.ja4[8:10] == "ad"


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_result(parse_tls_client_hello(data), ClientHello, ANOMALIES)
    check_result(parse_tls_client_hello(b"\x16\x03\x01" + data), ClientHello, ANOMALIES)
    check_result(parse_client_hello_handshake(data), ClientHello, ANOMALIES)
    check_result(parse_client_hello_handshake(b"\x01" + data), ClientHello, ANOMALIES)


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutations(tls_records(CHROME_PQ, 700)), mutations(MINIMAL)))
def test_mutated_and_truncated_streams_never_raise(data: bytes) -> None:
    check_result(parse_tls_client_hello(data), ClientHello, ANOMALIES)
    check_result(parse_client_hello_handshake(data[5:], "q"), ClientHello, ANOMALIES)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_any_record_split_and_any_prefix_agree(fragment: int, data: st.DataObject) -> None:
    stream = tls_records(CHROME_PQ, fragment)
    cut = data.draw(st.integers(0, len(stream)))
    result = parse_tls_client_hello(stream[:cut])
    assert result == parse_client_hello_handshake(CHROME_PQ) or (isinstance(result, NeedMore) and result.needed > cut)


# --- real captures ------------------------------------------------------------------------------

# Captures whose first client bytes are known not to be a decodable ClientHello.
KNOWN_ANOMALIES = {"negative/ndpi__google_ssl.pcap": {"tls.sslv2_hello"}}


@pytest.mark.parametrize("name", capture_names())
def test_sni_from_every_tcp_stream_matches_tshark(name: str) -> None:
    truth = require_captures()
    names, kinds = set(), set()
    for data in tcp_streams(segments(CAPTURES / name)).values():
        result = parse_tls_client_hello(data)
        check_result(result, ClientHello, ANOMALIES)
        if isinstance(result, ClientHello) and result.sni:
            names.add(result.sni)
        elif isinstance(result, Anomaly):
            kinds.add(result.kind)
    assert names == set(truth[name]["sni_tls"])
    assert kinds == KNOWN_ANOMALIES.get(name, set())

