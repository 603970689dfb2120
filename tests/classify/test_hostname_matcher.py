"""Hostname -> service matching: pattern semantics, precedence, every catalogue pattern, negatives."""

from __future__ import annotations

import ipaddress

import pytest
from _classify_helpers import capture_names
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.classify import Catalogue
from detector.classify.matcher import MAX_NAME_LEN, Matcher, parse_pattern, regexp_literal_suffix


def _matcher(*entries: tuple[str, str]) -> Matcher:
    patterns = []
    for owner, text in entries:
        parsed = parse_pattern(text)
        assert not isinstance(parsed, str), parsed
        patterns.append((owner, parsed))
    return Matcher(patterns)


# name -> (service, pattern) or None, against the real catalogue.
EDGE_CASES = [
    ("chatgpt.com", ("openai_chatgpt", "chatgpt.com")),
    ("www.chatgpt.com", ("openai_chatgpt", "chatgpt.com")),
    ("a.b.c.chatgpt.com", ("openai_chatgpt", "chatgpt.com")),
    # case-insensitive, trailing dot ignored
    ("ChatGPT.COM", ("openai_chatgpt", "chatgpt.com")),
    ("chatgpt.com.", ("openai_chatgpt", "chatgpt.com")),
    ("WWW.ChatGPT.com.", ("openai_chatgpt", "chatgpt.com")),
    # label boundaries: not a suffix by characters, not a prefix
    ("notchatgpt.com", None),
    ("chatgpt.com.evil.example", None),
    ("mychatgpt.org", None),
    ("chatgpt.co", None),
    ("chatgpt.comm", None),
    ("com", None),
    ("", None),
    (".", None),
    # full: beats a plain pattern of another service for that one host only
    ("sora.chatgpt.com", ("openai_sora", "full:sora.chatgpt.com")),
    ("x.sora.chatgpt.com", ("openai_chatgpt", "chatgpt.com")),
    ("api.openai.com", ("openai_api", "full:api.openai.com")),
    ("ios.chat.openai.com", ("openai_chatgpt", "full:ios.chat.openai.com")),
    # the longer label suffix beats the shorter
    ("chat.openai.com", ("openai_chatgpt", "chat.openai.com")),
    ("x.chat.openai.com", ("openai_chatgpt", "chat.openai.com")),
    ("help.openai.com", ("openai_api", "openai.com")),
    ("openai.com", ("openai_api", "openai.com")),
    # full: does not cover subdomains
    ("v1.api.anthropic.com", ("anthropic_api", "anthropic.com")),
    ("firefly.adobe.com", ("adobe_firefly", "full:firefly.adobe.com")),
    ("x.firefly.adobe.com", None),
    ("www.adobe.com", None),
    # shared apexes stay unmatched; only the listed hosts under them match
    ("www.google.com", None),
    ("gemini.google.com", ("google_gemini", "gemini.google.com")),
    ("generativelanguage.googleapis.com", ("google_ai_studio", "full:generativelanguage.googleapis.com")),
    ("fonts.googleapis.com", None),
    ("www.bing.com", None),
    ("bing.com", None),
    ("sydney.bing.com", ("ms_copilot_consumer", "full:sydney.bing.com")),
    ("lumo.proton.me", ("lumo_proton", "full:lumo.proton.me")),
    ("mail.proton.me", None),
    ("github.com", None),
    ("api.githubcopilot.com", ("github_copilot", "githubcopilot.com")),
    ("api.individual.githubcopilot.com", ("github_copilot", "githubcopilot.com")),
    ("capi.grammarly.com", ("grammarly", "grammarly.com")),
    ("darksail.ai", None),
    # regexps: tried only when no full/plain pattern matched, under their literal suffix
    (
        "chatgpt-async-webps-prod-westeurope-1.webpubsub.azure.com",
        ("openai_chatgpt", r"regexp:^chatgpt-async-webps-prod-\S+-\d+\.webpubsub\.azure\.com$"),
    ),
    ("chatgpt-async-webps-prod-westeurope.webpubsub.azure.com", None),
    ("other-app.webpubsub.azure.com", None),
    (
        "us-central1-aiplatform.googleapis.com",
        ("google_vertex", r"regexp:^[a-z0-9-]+-aiplatform\.googleapis\.com$"),
    ),
    (
        "US-CENTRAL1-AIPLATFORM.googleapis.com.",
        ("google_vertex", r"regexp:^[a-z0-9-]+-aiplatform\.googleapis\.com$"),
    ),
    ("aiplatform.googleapis.com", ("google_vertex", "full:aiplatform.googleapis.com")),
    ("x.us-central1-aiplatform.googleapis.com", None),
    (
        "bedrock-runtime.eu-central-1.amazonaws.com",
        ("aws_bedrock", r"regexp:^bedrock(-runtime)?\.[a-z0-9-]+\.amazonaws\.com$"),
    ),
    ("bedrock-agent.eu-central-1.amazonaws.com", None),
    ("s3.eu-central-1.amazonaws.com", None),
    ("ppl-ai-file-upload.s3.amazonaws.com", ("perplexity", "full:ppl-ai-file-upload.s3.amazonaws.com")),
]


@pytest.mark.parametrize(("name", "expected"), EDGE_CASES)
def test_hostname_matches_expected_service_and_pattern(
    catalogue: Catalogue, name: str, expected: tuple[str, str] | None
) -> None:
    match = catalogue.matcher.match(name)
    assert (None if match is None else (match.service, match.pattern)) == expected


def test_match_kind_names_the_pattern_type(catalogue: Catalogue) -> None:
    assert catalogue.matcher.match("chatgpt.com").kind == "domain"
    assert catalogue.matcher.match("api.openai.com").kind == "full"
    assert catalogue.matcher.match("eu-aiplatform.googleapis.com").kind == "regexp"


def test_grammarly_capture_name_is_attributed_to_grammarly(catalogue: Catalogue) -> None:
    match = catalogue.matcher.match("capi.grammarly.com")
    assert match is not None and match.service == "grammarly"


def _every_pattern(catalogue: Catalogue):
    for service in catalogue.services.values():
        for rule in service.domains:
            yield service.id, rule


def _pattern_ids(catalogue: Catalogue) -> list[str]:
    return [f"{sid}:{rule.pattern.text}" for sid, rule in _every_pattern(catalogue)]


def _winner_is_same_or_more_specific(
    catalogue: Catalogue, service_id: str, name: str, pattern_value: str
) -> None:
    """`name` must be won by `service_id`, or by a pattern strictly more specific than `pattern_value`."""
    match = catalogue.matcher.match(name)
    assert match is not None, f"{name} matches nothing"
    if match.service == service_id:
        return
    # Another service may win only with a more specific pattern (a full: host or a longer suffix).
    winner_value = match.pattern.split(":", 1)[1] if match.kind == "full" else match.pattern
    assert match.kind in ("full", "domain"), f"{name}: {service_id} lost to {match}"
    assert winner_value.endswith("." + pattern_value) or (
        match.kind == "full" and winner_value == pattern_value
    ), f"{name}: {service_id}'s {pattern_value} lost to the less specific {match}"


def test_every_catalogue_pattern_hits_its_own_service(catalogue: Catalogue) -> None:
    """Each plain pattern, a subdomain of it, each full: host and each regexp example is won by
    its own service (or, for plain patterns, a more specific one); and no pattern is shadowed
    entirely: every pattern wins at least one of its own names."""
    for service_id, rule in _every_pattern(catalogue):
        pat = rule.pattern
        if pat.kind == "domain":
            names = [pat.value, f"zz-probe.{pat.value}", f"a.b.{pat.value}"]
            for name in names:
                _winner_is_same_or_more_specific(catalogue, service_id, name, pat.value)
            won = [n for n in names if (m := catalogue.matcher.match(n)) and m.pattern == pat.text]
            assert won, f"{pat.text} ({service_id}) never wins: shadowed entirely"
        elif pat.kind == "full":
            match = catalogue.matcher.match(pat.value)
            assert match is not None and (match.service, match.pattern) == (service_id, pat.text)
        else:
            assert rule.examples, f"{pat.text} has no examples"
            for example in rule.examples:
                match = catalogue.matcher.match(example)
                assert match is not None and (match.service, match.pattern) == (service_id, pat.text), example


def test_catalogue_has_one_name_for_every_service(catalogue: Catalogue) -> None:
    assert len(catalogue.services) == 112
    for service in catalogue.services.values():
        names = [r.pattern.value for r in service.domains if r.pattern.kind != "regexp"]
        names += [e for r in service.domains for e in r.examples]
        assert any((m := catalogue.matcher.match(n)) and m.service == service.id for n in names), service.id


def test_no_name_in_negative_captures_matches_a_service(catalogue: Catalogue) -> None:
    per_file = capture_names("negative")
    hits = {
        (file, name, m.service)
        for file, names in per_file.items()
        for name in names
        if (m := catalogue.matcher.match(name)) is not None
    }
    assert hits == set()
    assert sum(len(n) for n in per_file.values()) > 200  # the negative set was actually read


def test_ai_capture_names_match_only_the_labelled_services(catalogue: Catalogue) -> None:
    matched = {
        name: m.service
        for names in capture_names("ai").values()
        for name in names
        if (m := catalogue.matcher.match(name)) is not None
    }
    assert matched == {"capi.grammarly.com": "grammarly"}  # www.bing.com is AI-adjacent, not AI


def test_plain_pattern_matches_by_whole_labels_only() -> None:
    m = _matcher(("svc", "example.com"))
    assert m.match("example.com") and m.match("a.example.com")
    assert m.match("badexample.com") is None
    assert m.match("example.com.attacker.net") is None


def test_full_pattern_beats_plain_pattern_for_the_same_name() -> None:
    m = _matcher(("wide", "example.com"), ("narrow", "full:example.com"))
    assert m.match("example.com").service == "narrow"
    assert m.match("www.example.com").service == "wide"


def test_longer_suffix_beats_shorter_whatever_the_order() -> None:
    for entries in (
        (("a", "example.com"), ("b", "x.example.com")),
        (("b", "x.example.com"), ("a", "example.com")),
    ):
        m = _matcher(*entries)
        assert m.match("y.x.example.com").service == "b"
        assert m.match("y.example.com").service == "a"


def test_regexp_is_tried_only_when_no_exact_or_suffix_pattern_matches() -> None:
    m = _matcher(("rx", r"regexp:^api-\d+\.example\.com$"), ("plain", "example.com"))
    assert m.match("api-1.example.com").service == "plain"
    m = _matcher(("rx", r"regexp:^api-\d+\.example\.com$"), ("other", "other.example.com"))
    assert m.match("api-1.example.com").service == "rx"
    assert m.match("api-x.example.com") is None


def test_regexp_without_literal_suffix_is_still_tried() -> None:
    m = _matcher(("rx", r"regexp:^(llm|gpt)\.[a-z]+\.(net|org)$"))
    assert m.match("gpt.anything.org").service == "rx"
    assert m.match("gpt.anything.com") is None


def test_regexp_sees_the_lowercased_name_without_trailing_dot() -> None:
    m = _matcher(("rx", r"regexp:^gpu-\d+\.cloud\.example$"))
    assert m.match("GPU-7.Cloud.Example.").service == "rx"


@pytest.mark.parametrize(
    ("source", "suffix"),
    [
        (r"^chatgpt-async-webps-prod-\S+-\d+\.webpubsub\.azure\.com$", ".webpubsub.azure.com"),
        (r"^[a-z0-9-]+-aiplatform\.googleapis\.com$", "-aiplatform.googleapis.com"),
        (r"^bedrock(-runtime)?\.[a-z0-9-]+\.amazonaws\.com$", ".amazonaws.com"),
        (r"^api\.example\.com\Z", "api.example.com"),
        (r"^x\.example\.coms?$", ""),  # quantified tail: nothing certain
        (r"^a\.(b|c)\.example$", ""),  # alternation: no prefilter
        (r"^prod-\d\.example\.com$", ".example.com"),  # \d is a class, not the letter d
        (r"^x\\.example$", "example"),  # an escaped backslash leaves the dot unescaped: any char
        (r"^x.example$", "example"),  # an unescaped dot is any character
    ],
)
def test_regexp_literal_suffix_is_what_every_match_must_end_with(source: str, suffix: str) -> None:
    assert regexp_literal_suffix(source) == suffix


def test_names_longer_than_dns_allows_match_nothing_and_are_not_memoised(catalogue: Catalogue) -> None:
    m = Matcher([("svc", parse_pattern("example.com"))])  # type: ignore[list-item]
    long_name = "a." * 200 + "example.com"
    assert len(long_name) > MAX_NAME_LEN
    assert m.match(long_name) is None
    assert m.cache_info().currsize == 0


def test_repeated_names_are_served_from_the_bounded_memo() -> None:
    m = Matcher([("svc", parse_pattern("example.com"))], cache_size=4)  # type: ignore[list-item]
    for _ in range(3):
        m.match("a.example.com")
    info = m.cache_info()
    assert (info.hits, info.misses) == (2, 1)
    for i in range(10):
        m.match(f"n{i}.example.com")
    assert m.cache_info().currsize == 4


def test_match_ip_finds_anthropic_api_range(catalogue: Catalogue) -> None:
    for addr, expected in [
        ("160.79.104.1", "160.79.104.0/23"),
        ("160.79.105.254", "160.79.104.0/23"),
        ("2607:6bc0::10", "2607:6bc0::/48"),
        ("::ffff:160.79.104.9", "160.79.104.0/23"),
    ]:
        match = catalogue.matcher.match_ip(ipaddress.ip_address(addr).packed)
        assert match is not None and (match.service, match.pattern, match.kind) == (
            "anthropic_api",
            expected,
            "ip-range",
        )
    for addr in ("160.79.106.1", "8.8.8.8", "2607:6bc1::1"):
        assert catalogue.matcher.match_ip(ipaddress.ip_address(addr).packed) is None
    assert catalogue.matcher.match_ip(b"\x01\x02\x03") is None


def test_explain_names_the_winner_and_the_patterns_it_beat(catalogue: Catalogue) -> None:
    text = catalogue.matcher.explain("x.chat.openai.com")
    assert "chat.openai.com  -> openai_chatgpt (pattern 'chat.openai.com')  <- wins" in text
    assert "openai.com  -> openai_api (pattern 'openai.com')  (less specific, not used)" in text
    assert text.endswith("result: openai_chatgpt via domain pattern 'chat.openai.com'")


def test_explain_shows_a_regexp_that_was_not_tried(catalogue: Catalogue) -> None:
    m = _matcher(("rx", r"regexp:^api-\d+\.example\.com$"), ("plain", "example.com"))
    text = m.explain("api-1.example.com")
    assert "matches, but not tried: an exact/suffix pattern matched first" in text
    assert text.endswith("result: plain via domain pattern 'example.com'")
    assert catalogue.matcher.explain("notchatgpt.com").endswith("result: no match")


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=0, max_size=70)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(_label, max_size=8).map(".".join)))
def test_random_hostnames_never_raise_in_the_matcher(catalogue: Catalogue, name: str) -> None:
    match = catalogue.matcher.match(name)
    assert match is None or match.service in catalogue.services
    catalogue.matcher.explain(name)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_label, max_size=4).map(".".join),
    st.sampled_from(["chatgpt.com", "openai.com", "grammarly.com"]),
)
def test_any_subdomain_of_a_plain_pattern_matches_a_service(
    catalogue: Catalogue, prefix: str, domain: str
) -> None:
    name = f"{prefix}.{domain}" if prefix else domain
    match = catalogue.matcher.match(name)
    assert match is not None
