"""JA4 per FoxIO's JA4.md: the spec's own examples, edge rules, and FoxIO's expected outputs on their pcaps."""

from __future__ import annotations

import pytest
from _app_helpers import CAPTURES, client_hello, require_captures, segments, tcp_streams

from detector.decode.tls import ja4_fingerprint, parse_client_hello_handshake, parse_tls_client_hello
from detector.model import ClientHello

# JA4.md "Cipher hash" / "Extension hash" example lists (original order).
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
                0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]  # fmt: skip
SPEC_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D,
                   0x0005, 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]  # fmt: skip
SPEC_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def test_spec_example() -> None:
    assert (
        ja4_fingerprint("t", 0x0304, SPEC_CIPHERS, SPEC_EXTENSIONS, b"h2", SPEC_SIGALGS)
        == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    )


def test_spec_example_without_signature_algorithms_has_no_underscore() -> None:
    # JA4.md: "0005,...,ff01 = 6d807ffa2a79"
    assert ja4_fingerprint("t", 0x0304, SPEC_CIPHERS, SPEC_EXTENSIONS, b"h2", []).endswith("_6d807ffa2a79")


def test_grease_is_ignored_in_every_list() -> None:
    greased = ja4_fingerprint(
        "t", 0x0304, [0x3A3A, *SPEC_CIPHERS], [0x0A0A, *SPEC_EXTENSIONS, 0xFAFA], b"h2", [0x5A5A, *SPEC_SIGALGS]
    )
    assert greased == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_empty_cipher_list_and_empty_extension_hash_are_zeros() -> None:
    assert ja4_fingerprint("t", 0x0303, [], [0x0000, 0x0010], b"h2", []) == "t12d0002h2_000000000000_000000000000"


def test_counts_are_capped_at_99() -> None:
    assert ja4_fingerprint("t", 0x0303, list(range(1, 200)), list(range(1, 200)), None, [])[:10] == "t12i999900"


@pytest.mark.parametrize(
    ("alpn", "chars"),
    [
        (None, "00"),
        (b"h2", "h2"),
        (b"http/1.1", "h1"),
        (b"h3-29", "h9"),
        (b"a", "aa"),  # a single character is first and last
        # JA4.md: a non-alphanumeric first or last byte → first and last hex digit
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ],
)
def test_alpn_characters(alpn: bytes | None, chars: str) -> None:
    assert ja4_fingerprint("t", 0x0304, [0x1301], [0x0010], alpn, [])[8:10] == chars


@pytest.mark.parametrize(
    ("version", "code"),
    [(0x0304, "13"), (0x0303, "12"), (0x0302, "11"), (0x0301, "10"), (0x0300, "s3"), (0x0002, "s2"),
     (0xFEFF, "d1"), (0xFEFD, "d2"), (0xFEFC, "d3"), (0x7F1C, "00"), (0, "00")],
)  # fmt: skip
def test_version_codes(version: int, code: str) -> None:
    assert ja4_fingerprint("t", version, [], [], None, [])[1:3] == code


def test_chrome_with_ech_matches_a_published_fingerprint() -> None:
    # browserleaks.com reported Chrome 143 (same ciphers, extensions incl. 44cd and fe0d,
    # and signature algorithms as this builder) as t13d1516h2_8daaf6152771_d8a2da3f94cd.
    hello = parse_client_hello_handshake(client_hello(ech=True))
    assert isinstance(hello, ClientHello) and hello.ja4 == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


# --- FoxIO's expected outputs ---------------------------------------------------------------------
# From FoxIO-LLC/ja4 rust/ja4/src/snapshots/ja4__insta@{tls3,latest,browsers-x509}.pcapng.snap and
# python/test/testdata/ipv6.pcapng.json: client port -> (tls_server_name, ja4). QUIC flows of these
# files belong to the QUIC decoder's tests.
FOXIO_EXPECTED: dict[str, dict[int, tuple[str, str]]] = {
    "negative/ja4__tls3.pcapng": {
        63248: ("darksail.ai", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        63250: ("darksail.ai", "t13d1516h2_8daaf6152771_9b887d9acb53"),
        63251: ("darksail.ai", "t13d1516h2_8daaf6152771_9b887d9acb53"),
        63252: ("rsms.me", "t13d1516h2_8daaf6152771_9b887d9acb53"),
        63253: ("darksail.ai", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        63254: ("darksail.ai", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        63255: ("darksail.ai", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
    },
    "negative/ja4__latest.pcapng": {
        52936: ("pdx-col.eum-appdynamics.com", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        52937: ("discovery.cem.cloud.us", "t12d190800_d83cc789557e_7af1ed941c26"),
        52938: ("app.slack.com", "t13d1516h2_8daaf6152771_9b887d9acb53"),
        52940: ("ping-edge.smartscreen.microsoft.com", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        52941: ("data-edge.smartscreen.microsoft.com", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
    },
    "negative/ja4__browsers-x509.pcapng": {
        54524: ("edge.microsoft.com", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        54525: ("nym1-ib.adnxs.com", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
        54603: ("lptag.liveperson.net", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
    },
    "tricky/ja4__ipv6.pcapng": {
        64034: ("www.cloudflare.com", "t12d4605h2_85626a9a5f7f_aaf95bb78ec9"),
    },
}


def _tcp_hellos(name: str) -> dict[int, ClientHello]:
    hellos = {}
    for (_src, _dst, sport, _dport), data in tcp_streams(segments(CAPTURES / name)).items():
        result = parse_tls_client_hello(data)
        if isinstance(result, ClientHello):
            hellos[sport] = result
    return hellos


@pytest.mark.parametrize("name", sorted(FOXIO_EXPECTED))
def test_foxio_expected_ja4_on_their_pcaps(name: str) -> None:
    require_captures()
    hellos = _tcp_hellos(name)
    assert {port: (h.sni, h.ja4) for port, h in hellos.items()} == FOXIO_EXPECTED[name]


def test_same_hello_over_quic_changes_only_the_transport_letter() -> None:
    require_captures()
    streams = tcp_streams(segments(CAPTURES / "negative/ja4__latest.pcapng"))
    data = next(d for (_s, _d, sport, _p), d in streams.items() if sport == 52936)
    length = int.from_bytes(data[3:5], "big")
    hello = parse_client_hello_handshake(data[5 : 5 + length], "q")
    assert isinstance(hello, ClientHello) and hello.ja4 == "q13d1516h2_8daaf6152771_e5627efa2ab1"
