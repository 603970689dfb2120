"""FlowRecord / DNS message -> UsageEvent: attribution order, fields, ids, encrypted DNS, candidates."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest
from _classify_helpers import TEST_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.classify import Catalogue, Classifier, PolicyConfig, Pseudonymiser
from detector.model import TCP, UDP, DnsMessage, EndReason, EventKind, Evidence, FlowRecord, UsageEvent

TS = 1767225600.25  # 2026-01-01T00:00:00.25Z
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _flow(
    server_name: str | None = "chatgpt.com",
    server: str = "104.18.32.47",
    client: str = "10.20.9.4",
    server_port: int = 443,
    evidence: Evidence | None = Evidence.TLS_SNI,
    **extra: object,
) -> FlowRecord:
    fields: dict[str, object] = dict(
        first_ts=TS,
        last_ts=TS + 12.5,
        client=_ip(client),
        server=_ip(server),
        client_port=51234,
        server_port=server_port,
        proto=TCP,
        bytes_up=4200,
        bytes_down=98000,
        packets=120,
        reason=EndReason.FIN,
        server_name=server_name,
        evidence=evidence,
        alpn=("h2", "http/1.1"),
        ja4="t13d1516h2_8daaf6152771_02713d6af862",
    )
    fields.update(extra)
    return FlowRecord(**fields)  # type: ignore[arg-type]


def test_flow_to_catalogue_name_becomes_a_full_event(classifier: Classifier) -> None:
    event = classifier.classify_flow(_flow())
    assert event == UsageEvent(
        ts="2026-01-01T00:00:00.250000Z",
        kind="flow",
        client=Pseudonymiser(TEST_KEY).pseudonym(_ip("10.20.9.4")),
        department="Sociaal Domein - Jeugd",
        service="openai_chatgpt",
        vendor="OpenAI",
        category="chat_assistant",
        jurisdiction="US",
        policy="unsanctioned",
        server_name="chatgpt.com",
        server_ip="104.18.32.47",
        server_port=443,
        transport="tcp",
        evidence="tls-sni",
        bytes_up=4200,
        bytes_down=98000,
        packets=120,
        duration=12.5,
        ja4="t13d1516h2_8daaf6152771_02713d6af862",
        alpn="h2,http/1.1",
        pattern="chatgpt.com",
        sensor="test-sensor",
        event_id=event.event_id if event else "",
    )
    assert event is not None and re.fullmatch(r"[0-9a-f]{32}", event.event_id)


def test_policy_and_jurisdiction_come_from_policy_and_catalogue(classifier: Classifier) -> None:
    deepseek = classifier.classify_flow(_flow("chat.deepseek.com"))
    copilot = classifier.classify_flow(_flow("copilot.cloud.microsoft"))
    assert deepseek is not None and (deepseek.policy, deepseek.jurisdiction) == ("blocked", "CN")
    assert copilot is not None and copilot.policy == "sanctioned"


def test_flow_without_name_is_attributed_by_vendor_ip_range(classifier: Classifier) -> None:
    event = classifier.classify_flow(_flow(None, server="160.79.104.20", evidence=None))
    assert event is not None
    assert (event.service, event.evidence, event.pattern, event.server_name) == (
        "anthropic_api",
        "ip-range",
        "160.79.104.0/23",
        "",
    )


def test_name_match_wins_over_ip_range(classifier: Classifier) -> None:
    event = classifier.classify_flow(_flow("claude.ai", server="160.79.104.20"))
    assert event is not None and (event.service, event.evidence) == ("anthropic_claude", "tls-sni")


def test_unmatched_name_on_vendor_range_falls_back_to_the_range(classifier: Classifier) -> None:
    event = classifier.classify_flow(_flow("cloudflare-ech.com", server="2607:6bc0::5"))
    assert event is not None and (event.service, event.evidence) == ("anthropic_api", "ip-range")


def test_unmatched_flow_is_dropped_unless_asked_for(classifier: Classifier) -> None:
    rec = _flow("www.example.com")
    assert classifier.classify_flow(rec) is None
    event = classifier.classify_flow(rec, include_unmatched=True)
    assert event is not None
    assert (event.kind, event.service, event.vendor, event.policy, event.pattern) == ("flow", "", "", "", "")
    assert classifier.classify_flow(rec, include_candidates=True) is None


def test_ai_looking_unmatched_flow_is_a_candidate(classifier: Classifier) -> None:
    rec = _flow("darksail.ai")
    assert classifier.classify_flow(rec) is None
    for kwargs in ({"include_candidates": True}, {"include_unmatched": True}):
        event = classifier.classify_flow(rec, **kwargs)
        assert event is not None and (event.kind, event.service) == ("candidate", "")
    assert classifier.is_candidate("darksail.ai")
    assert not classifier.is_candidate("chatgpt.com")  # in the catalogue: attributed, not a candidate
    assert not classifier.is_candidate("www.example.com")
    assert not classifier.is_candidate("")


@pytest.mark.parametrize(
    ("server_name", "server", "port", "resolver", "evidence"),
    [
        ("mozilla.cloudflare-dns.com", "104.16.248.249", 443, "cloudflare_dns", "tls-sni"),
        ("dns.google", "8.8.8.8", 853, "google_public_dns", "tls-sni"),
        (None, "8.8.4.4", 443, "google_public_dns", "ip-range"),
        (None, "2606:4700:4700::1111", 443, "cloudflare_dns", "ip-range"),
        (None, "9.9.9.9", 853, "quad9", "ip-range"),
        ("abc123.dns.nextdns.io", "45.90.28.1", 853, "nextdns", "tls-sni"),
    ],
)
def test_flow_to_public_resolver_is_encrypted_dns(
    classifier: Classifier, server_name: str | None, server: str, port: int, resolver: str, evidence: str
) -> None:
    rec = _flow(
        server_name, server=server, server_port=port, evidence=Evidence.TLS_SNI if server_name else None
    )
    event = classifier.classify_flow(rec)
    assert event is not None
    assert (event.kind, event.service, event.category, event.evidence) == (
        "encrypted-dns",
        resolver,
        "encrypted_dns",
        evidence,
    )
    assert event.policy == ("tolerated" if resolver == "quad9" else "unsanctioned")


def test_plain_dns_to_public_resolver_is_not_encrypted_dns(classifier: Classifier) -> None:
    assert (
        classifier.classify_flow(_flow(None, server="8.8.8.8", server_port=53, evidence=None, proto=UDP))
        is None
    )


def test_event_id_is_deterministic_and_distinguishes_flows(
    classifier: Classifier, catalogue: Catalogue, policy: PolicyConfig
) -> None:
    rec = _flow()
    again = Classifier(catalogue, policy, Pseudonymiser(TEST_KEY), sensor="another-sensor")
    first = classifier.classify_flow(rec)
    assert first is not None
    assert first.event_id == again.classify_flow(rec).event_id  # type: ignore[union-attr]
    ids = {first.event_id}
    for change in (
        {"client_port": 51235},
        {"first_ts": TS + 1e-6},
        {"server": _ip("104.18.32.48")},
        {"proto": UDP},
    ):
        other = classifier.classify_flow(dataclasses.replace(rec, **change))
        assert other is not None
        ids.add(other.event_id)
    assert len(ids) == 5


def test_raw_clients_shows_the_address_instead_of_the_pseudonym(
    catalogue: Catalogue, policy: PolicyConfig
) -> None:
    raw = Classifier(catalogue, policy, Pseudonymiser(TEST_KEY), raw_clients=True)
    event = raw.classify_flow(_flow(client="2001:db8:20:8::42"))
    assert event is not None and (event.client, event.department) == (
        "2001:db8:20:8::42",
        "Sociaal Domein - Jeugd",
    )


def test_client_outside_every_subnet_is_in_department_unknown(classifier: Classifier) -> None:
    event = classifier.classify_flow(_flow(client="192.168.1.10"))
    assert event is not None and event.department == "unknown"


@pytest.mark.parametrize(
    ("ts", "iso"),
    [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (1767225600.000001, "2026-01-01T00:00:00.000001Z"),
        (-5.0, "1970-01-01T00:00:00.000000Z"),
        (1e13, "9999-12-31T23:59:59.000000Z"),
        (float("nan"), "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_iso8601_utc_with_microseconds_and_z(
    classifier: Classifier, ts: float, iso: str
) -> None:
    event = classifier.classify_flow(_flow(first_ts=ts, last_ts=ts))
    assert event is not None and event.ts == iso and ISO_Z.fullmatch(event.ts)


def _query(*names: str, response: bool = False) -> DnsMessage:
    return DnsMessage(txid=0x1234, is_response=response, rcode=0, questions=tuple((n, 1) for n in names))


def test_dns_query_gives_one_event_per_matching_distinct_name(classifier: Classifier) -> None:
    msg = DnsMessage(
        0x1234,
        False,
        0,
        (("chatgpt.com", 1), ("chatgpt.com", 28), ("www.example.com", 1), ("api.deepl.com", 1)),
    )
    events = classifier.classify_dns(TS, _ip("10.10.3.3"), _ip("10.0.0.53"), 53, msg, 77, client_port=40000)
    assert [(e.kind, e.service, e.server_name, e.evidence) for e in events] == [
        ("dns", "openai_chatgpt", "chatgpt.com", "dns"),
        ("dns", "deepl", "api.deepl.com", "dns"),
    ]
    first = events[0]
    assert (first.department, first.server_ip, first.server_port, first.transport) == (
        "Burgerzaken",
        "10.0.0.53",
        53,
        "udp",
    )
    assert (first.bytes_up, first.bytes_down, first.packets) == (77, 0, 1)
    assert first.ts == "2026-01-01T00:00:00.250000Z"
    assert events[0].event_id != events[1].event_id


def test_dns_response_counts_its_bytes_down_and_has_its_own_id(classifier: Classifier) -> None:
    args = (TS, _ip("10.10.3.3"), _ip("10.0.0.53"), 53)
    query = classifier.classify_dns(*args, _query("claude.ai"), 40)
    response = classifier.classify_dns(*args, _query("claude.ai", response=True), 120)
    assert (response[0].bytes_up, response[0].bytes_down) == (0, 120)
    assert query[0].event_id == classifier.classify_dns(*args, _query("claude.ai"), 40)[0].event_id
    assert (
        query[0].event_id
        != classifier.classify_dns(*args, _query("claude.ai"), 40, transport="tcp")[0].event_id
    )


def test_dns_unmatched_and_candidate_names(classifier: Classifier) -> None:
    args = (TS, _ip("10.10.3.3"), _ip("10.0.0.53"), 53, _query("www.example.com", "llmhub.dev"), 60)
    assert classifier.classify_dns(*args) == []
    assert [(e.kind, e.server_name) for e in classifier.classify_dns(*args, include_candidates=True)] == [
        ("candidate", "llmhub.dev")
    ]
    assert [(e.kind, e.server_name) for e in classifier.classify_dns(*args, include_unmatched=True)] == [
        ("dns", "www.example.com"),
        ("candidate", "llmhub.dev"),
    ]


def test_dns_lookup_of_a_resolver_name_is_not_reported(classifier: Classifier) -> None:
    assert classifier.classify_dns(TS, _ip("10.10.3.3"), _ip("10.0.0.53"), 53, _query("dns.google"), 40) == []


def test_explain_covers_catalogue_resolvers_and_candidates(classifier: Classifier) -> None:
    text = classifier.explain("darksail.ai")
    assert "result: no match" in text
    assert "encrypted-DNS resolvers: no match" in text
    assert text.endswith("candidate: yes (the .ai top-level domain)")
    assert (
        "encrypted-DNS resolvers: cloudflare_dns via domain pattern 'cloudflare-dns.com'"
        in classifier.explain("mozilla.cloudflare-dns.com")
    )


def test_event_kinds_are_model_values(classifier: Classifier) -> None:
    kinds = {k.value for k in EventKind}
    event = classifier.classify_flow(_flow())
    assert event is not None and event.kind in kinds


_addr = st.one_of(
    st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16), st.binary(max_size=20)
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.one_of(st.none(), st.text(max_size=80)),
    client=_addr,
    server=_addr,
    port=st.integers(0, 65535),
    ts=st.floats(allow_nan=True, allow_infinity=True),
)
def test_classify_flow_never_raises(
    classifier: Classifier, name: str | None, client: bytes, server: bytes, port: int, ts: float
) -> None:
    rec = _flow(name, client="10.0.0.1", server_port=port, first_ts=ts, last_ts=ts)
    rec.client, rec.server = client, server
    event = classifier.classify_flow(rec, include_unmatched=True)
    assert event is not None and ISO_Z.fullmatch(event.ts)


def test_over_long_names_are_neither_matched_nor_memoised_as_candidates(classifier: Classifier) -> None:
    name = "gpt-" + "a" * 70_000 + ".ai"
    before = classifier._candidate.cache_info()  # the memo's bound is the behaviour under test
    assert not classifier.is_candidate(name)
    assert classifier.classify_flow(_flow(name), include_candidates=True) is None
    after = classifier._candidate.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamp_text_equals_the_standard_librarys(ts: float) -> None:
    import datetime

    from detector.classify.classifier import _iso

    expected = datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert _iso(ts) == expected
