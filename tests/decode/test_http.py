"""HTTP/1.x request-head decoder: Host, User-Agent, CONNECT, absolute-form, bounds, properties."""

from __future__ import annotations

import pytest
from _app_helpers import check_result, mutations
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decode import http
from detector.decode.http import ANOMALIES, MAX_USER_AGENT_LEN, parse_http_request
from detector.model import MAX_HTTP_HEAD_LEN, Anomaly, HttpRequest, NeedMore

GET = (
    b"GET /v1/models HTTP/1.1\r\n"
    b"Host: API.OpenAI.com:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
    b"body bytes are not ours"
)

CONNECT = b"CONNECT chatgpt.com:443 HTTP/1.1\r\nHost: chatgpt.com:443\r\nUser-Agent: curl/8.5.0\r\n\r\n"


def test_get_gives_host_without_port_lower_cased_and_user_agent() -> None:
    assert parse_http_request(GET) == HttpRequest(
        method="GET",
        host="api.openai.com",
        target="/v1/models",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    )


def test_connect_gives_host_and_port() -> None:
    assert parse_http_request(CONNECT) == HttpRequest(
        method="CONNECT", host="chatgpt.com", target="chatgpt.com:443", user_agent="curl/8.5.0", connect_port=443
    )


def test_connect_to_an_ipv6_literal() -> None:
    result = parse_http_request(b"CONNECT [2001:DB8::1]:8443 HTTP/1.1\r\n\r\n")
    assert isinstance(result, HttpRequest) and (result.host, result.connect_port) == ("2001:db8::1", 8443)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM.", "example.com"),  # trailing dot dropped
        (b"[2001:db8::1]:8080", "2001:db8::1"),  # IPv6 literal: brackets and port dropped
        (b"[::1]", "::1"),
        (b"192.0.2.1:80", "192.0.2.1"),
        (b"example.com:", "example.com"),  # empty port is allowed (RFC 3986)
        (b"", None),  # empty Host: no name
    ],
)
def test_host_header_forms(host: bytes, expected: str | None) -> None:
    result = parse_http_request(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert isinstance(result, HttpRequest) and result.host == expected


def test_absolute_form_gives_the_url_host_when_there_is_no_host_header() -> None:
    result = parse_http_request(b"GET http://user:pw@Claude.AI:80/chat?q=1 HTTP/1.1\r\n\r\n")
    assert isinstance(result, HttpRequest) and result.host == "claude.ai"


def test_absolute_form_url_host_wins_over_the_host_header() -> None:
    # RFC 9112 §3.2.2: a proxy routes by the target and must ignore Host.
    result = parse_http_request(b"GET https://gemini.google.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert isinstance(result, HttpRequest) and result.host == "gemini.google.com"


def test_origin_form_without_host_has_no_name() -> None:
    result = parse_http_request(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(result, HttpRequest) and result.host is None and result.user_agent is None


def test_bare_lf_line_endings_are_accepted() -> None:
    result = parse_http_request(b"HEAD / HTTP/1.1\nhost: a.example\nuser-agent: x\n\n")
    assert isinstance(result, HttpRequest) and (result.host, result.user_agent) == ("a.example", "x")


def test_target_with_unencoded_spaces_still_gives_host() -> None:
    result = parse_http_request(b"GET /shell?cd /tmp; wget x HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
    assert isinstance(result, HttpRequest) and result.host == "127.0.0.1"
    assert result.target == "/shell?cd /tmp; wget x"


def test_long_user_agent_is_cut() -> None:
    result = parse_http_request(b"GET / HTTP/1.1\r\nUser-Agent: " + b"A" * 5000 + b"\r\n\r\n")
    assert isinstance(result, HttpRequest) and len(result.user_agent or "") == MAX_USER_AGENT_LEN


def test_folded_and_colonless_lines_are_skipped() -> None:
    head = b"POST /x HTTP/1.1\r\nX-Long: a\r\n  continued: no\r\nnot a field\r\nHost: b.example\r\n\r\n"
    result = parse_http_request(head)
    assert isinstance(result, HttpRequest) and result.host == "b.example"


# --- need more, not HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 20, 30, len(GET) - len(b"\r\nbody bytes are not ours") - 1])
def test_prefixes_of_a_request_need_more(cut: int) -> None:
    assert parse_http_request(GET[:cut]) == NeedMore(0)


def test_every_prefix_needs_more_or_gives_the_request() -> None:
    full = parse_http_request(CONNECT)
    for cut in range(1, len(CONNECT) + 1):
        assert parse_http_request(CONNECT[:cut]) in (full, NeedMore(0))


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior knowledge preface
        b"HTTP/1.1 200 OK\r\n\r\n",  # a response: the other direction
        b"GETX / HTTP/1.1\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",  # methods are case-sensitive
        b"POSTPONED",
    ],
)
def test_non_http_is_rejected(stream: bytes) -> None:
    assert parse_http_request(stream) is None


# --- anomalies ----------------------------------------------------------------------------------

ANOMALY_STREAMS = {
    "http.head_too_long": b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HTTP_HEAD_LEN,
    "http.bad_request_line": b"GET /\r\n\r\n",
    "http.bad_version": b"GET / HTTP/2.0\r\n\r\n",
    "http.duplicate_host": b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    "http.bad_host": b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n",
    "http.bad_connect_target": b"CONNECT chatgpt.com HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("kind", sorted(ANOMALY_STREAMS))
def test_each_anomaly_is_named(kind: str) -> None:
    assert parse_http_request(ANOMALY_STREAMS[kind]) == Anomaly(kind)


def test_every_declared_anomaly_has_a_test() -> None:
    assert set(ANOMALY_STREAMS) == set(ANOMALIES)


@pytest.mark.parametrize(
    ("stream", "anomaly"),
    [
        (b"GET / HTTP/1.1\r\nHost: 2001:db8::1\r\n\r\n", http.BAD_HOST),  # IPv6 without brackets
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1\r\n\r\n", http.BAD_HOST),
        (b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", http.BAD_HOST),
        (b"GET http://a b/ HTTP/1.1\r\n\r\n", http.BAD_HOST),
        (b"CONNECT :443 HTTP/1.1\r\n\r\n", http.BAD_CONNECT_TARGET),
        (b"CONNECT a.example:0 HTTP/1.1\r\n\r\n", http.BAD_CONNECT_TARGET),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 3000 + b"\r\n", http.HEAD_TOO_LONG),
        (b"GET / HTTP/9.9\r\n", http.BAD_VERSION),  # judged before the head is complete
    ],
)
def test_more_malformed_heads(stream: bytes, anomaly: Anomaly) -> None:
    assert parse_http_request(stream) == anomaly


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    check_result(parse_http_request(data), HttpRequest, ANOMALIES)
    check_result(parse_http_request(b"GET " + data), HttpRequest, ANOMALIES)
    check_result(parse_http_request(b"CONNECT " + data + b"\r\n\r\n"), HttpRequest, ANOMALIES)


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutations(GET), mutations(CONNECT)))
def test_mutated_and_truncated_heads_never_raise(data: bytes) -> None:
    check_result(parse_http_request(data), HttpRequest, ANOMALIES)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcXYZ019.-_:[]@/ ", max_size=40), st.text(max_size=40))
def test_any_host_and_user_agent_text_never_raise(host: str, agent: str) -> None:
    head = f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n\r\n".encode()
    check_result(parse_http_request(head), HttpRequest, ANOMALIES)
