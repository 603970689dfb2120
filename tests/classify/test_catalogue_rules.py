"""rules/ loads cleanly; every invalid fixture in testdata/ yields exactly its pinned problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _classify_helpers import POLICY_EXAMPLE, RULES, TESTDATA

from detector.classify import RulesError, check_rules, load_catalogue, load_policy
from detector.classify.catalogue import CATEGORIES, JURISDICTIONS, NEVER_PLAIN, RuleProblem
from detector.model import Policy

C = "catalogue/"
CATEGORY_LIST = ", ".join(CATEGORIES)
POLICY_VALUES = "sanctioned, tolerated, unsanctioned, blocked"
APEX = "shared apex, never a plain pattern (use full: hosts or a regexp)"
BAD_NET = "does not appear to be an IPv4 or IPv6 network"

# fixture -> the exact `file: entry: problem` lines check_rules prints for it. Catalogue fixtures
# are added to a copy of rules/catalogue/, dns fixtures replace encrypted_dns.yaml, policy
# fixtures are the policy file.
EXPECTED: dict[str, list[str]] = {
    "invalid-catalogue-bad-cidr.yaml": [
        f"{C}invalid-catalogue-bad-cidr.yaml: bad_cidrs: bad CIDR '160.79.104.1/23': 160.79.104.1/23 has host bits set",
        f"{C}invalid-catalogue-bad-cidr.yaml: bad_cidrs: bad CIDR '10.0.0.0/33': '10.0.0.0/33' {BAD_NET}",
        f"{C}invalid-catalogue-bad-cidr.yaml: bad_cidrs: bad CIDR 'not-an-address': 'not-an-address' {BAD_NET}",
    ],
    "invalid-catalogue-bad-patterns.yaml": [
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern 'Bad-Patterns.example': "
        "must be written lower-case without a trailing dot",
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern '*.bad-patterns.example': "
        "no wildcard needed: a plain pattern already covers every subdomain",
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern 'example': "
        "needs at least two labels (a single label would match a whole TLD)",
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern 'keyword:gpt': "
        "unknown pattern type 'keyword:' (use a plain domain, full: or regexp:)",
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern 'full:': empty host name",
        f"{C}invalid-catalogue-bad-patterns.yaml: bad_patterns: pattern 'bad_patterns-.ex ample': "
        "not a valid domain name (letters, digits, '-' and '_' in dot-separated labels)",
    ],
    "invalid-catalogue-bad-regexp.yaml": [
        f"{C}invalid-catalogue-bad-regexp.yaml: bad_regexp: pattern 'regexp:^api(\\.bad-regexp\\.example$': "
        "bad regexp: missing ), unterminated subpattern at position 4",
    ],
    "invalid-catalogue-duplicate-id.yaml": [
        f"{C}invalid-catalogue-duplicate-id.yaml: openai_chatgpt: duplicate id (first defined in {C}chat_assistant.yaml)",
    ],
    "invalid-catalogue-duplicate-key.yaml": [
        f"{C}invalid-catalogue-duplicate-key.yaml: line 6: duplicate key 'name'",
    ],
    "invalid-catalogue-format.yaml": [
        f"{C}invalid-catalogue-format.yaml: (top level): unknown key 'version'",
        f"{C}invalid-catalogue-format.yaml: format: unsupported format 2 (this version reads 1)",
    ],
    "invalid-catalogue-ip-range-claimed-twice.yaml": [
        # model_api.yaml sorts after the fixture, so the later claimant is anthropic_api.
        f"{C}model_api.yaml: anthropic_api: range 160.79.104.0/23 is also claimed by range_thief "
        f"({C}invalid-catalogue-ip-range-claimed-twice.yaml)",
    ],
    "invalid-catalogue-missing-keys.yaml": [
        f"{C}invalid-catalogue-missing-keys.yaml: missing_keys: missing required key 'vendor'",
        f"{C}invalid-catalogue-missing-keys.yaml: missing_keys: missing required key 'sources'",
        f"{C}invalid-catalogue-missing-keys.yaml: missing_keys: missing required key 'category'",
        f"{C}invalid-catalogue-missing-keys.yaml: missing_keys: domains[0]: missing required key 'sources'",
        f"{C}invalid-catalogue-missing-keys.yaml: services[1]: id 'Bad-Id' must be lower-case letters, digits and '_'",
        f"{C}invalid-catalogue-missing-keys.yaml: services[1]: matches nothing: no domains and no ip_ranges",
    ],
    "invalid-catalogue-pattern-claimed-twice.yaml": [
        f"{C}invalid-catalogue-pattern-claimed-twice.yaml: chat_clone: pattern 'chatgpt.com' is also claimed by "
        f"openai_chatgpt ({C}chat_assistant.yaml)",
        f"{C}invalid-catalogue-pattern-claimed-twice.yaml: chat_clone: pattern 'chat-clone.example' is listed twice",
        f"{C}model_api.yaml: openai_api: pattern 'full:api.openai.com' is also claimed by chat_clone "
        f"({C}invalid-catalogue-pattern-claimed-twice.yaml)",
    ],
    "invalid-catalogue-regexp-shadowed.yaml": [
        f"{C}invalid-catalogue-regexp-shadowed.yaml: shadowed_regexp: pattern 'regexp:^gpu-\\d+\\.example-cloud\\.net$': "
        "a regexp needs at least one example name",
        f"{C}invalid-catalogue-regexp-shadowed.yaml: shadowed_regexp: example 'api-1.openai.com' is won by "
        "openai_api's pattern 'openai.com' (regexps are tried only when no full/plain pattern matches)",
        f"{C}invalid-catalogue-regexp-shadowed.yaml: shadowed_regexp: example 'api-x.openai.com' does not match "
        "pattern 'regexp:^api-\\d+\\.openai\\.com$'",
    ],
    "invalid-catalogue-shared-apex.yaml": [
        f"{C}invalid-catalogue-shared-apex.yaml: apex_grabber: pattern 'google.com': {APEX}",
        f"{C}invalid-catalogue-shared-apex.yaml: apex_grabber: pattern 'azure.com': {APEX}",
    ],
    "invalid-catalogue-top-level.yaml": [
        f"{C}invalid-catalogue-top-level.yaml: (top level): must be a mapping, not a list",
    ],
    "invalid-catalogue-unknown-keys.yaml": [
        f"{C}invalid-catalogue-unknown-keys.yaml: typo_keys: unknown key 'domain'",
        f"{C}invalid-catalogue-unknown-keys.yaml: typo_keys: ip_ranges[0]: unknown key 'comment'",
    ],
    "invalid-catalogue-unknown-values.yaml": [
        f"{C}invalid-catalogue-unknown-values.yaml: unknown_values: unknown jurisdiction 'NL' "
        f"(one of: {', '.join(JURISDICTIONS)})",
        f"{C}invalid-catalogue-unknown-values.yaml: unknown_values: unknown category 'chatbot' (one of: {CATEGORY_LIST})",
        f"{C}invalid-catalogue-unknown-values.yaml: unknown_values: unknown source abbreviation 'FOO' (see sources.yaml)",
        f"{C}invalid-catalogue-unknown-values.yaml: unknown_values: unknown source abbreviation 'XYZ' (see sources.yaml)",
    ],
    "invalid-catalogue-wrong-types.yaml": [
        f"{C}invalid-catalogue-wrong-types.yaml: wrong_types: 'name' must be a string, not an integer",
        f"{C}invalid-catalogue-wrong-types.yaml: wrong_types: 'domains' must be a list, not a string",
        f"{C}invalid-catalogue-wrong-types.yaml: wrong_types: 'sources' must be a list, not a mapping",
        f"{C}invalid-catalogue-wrong-types.yaml: wrong_types_2: domains[0]: must be a mapping, not a list",
        f"{C}invalid-catalogue-wrong-types.yaml: wrong_types_2: domains[1]: 'sources' must be a list, not a string",
        f"{C}invalid-catalogue-wrong-types.yaml: services[2]: must be a mapping, not a string",
    ],
    "invalid-catalogue-yaml-syntax.yaml": [
        f"{C}invalid-catalogue-yaml-syntax.yaml: line 6: YAML error: did not find expected ',' or '}}'",
    ],
    "invalid-dns-resolvers.yaml": [
        "encrypted_dns.yaml: ports: '70000' is not a port number",
        "encrypted_dns.yaml: bad_resolver: hostname 'doh.chatgpt.com' is also matched by catalogue service openai_chatgpt",
        f"encrypted_dns.yaml: bad_resolver: bad CIDR '8.8.8.300': '8.8.8.300' {BAD_NET}",
        "encrypted_dns.yaml: deepl: range 192.0.2.53/32 is also claimed by bad_resolver (encrypted_dns.yaml)",
        f"encrypted_dns.yaml: deepl: duplicate id (first defined in {C}translation_writing.yaml)",
        "encrypted_dns.yaml: empty_resolver: matches nothing: no hostnames and no addresses",
    ],
    "invalid-policy-subnets.yaml": [
        "invalid-policy-subnets.yaml: departments: Burgerzaken: bad CIDR '10.20.9.1/21': 10.20.9.1/21 has host bits set",
        f"invalid-policy-subnets.yaml: departments: Burgerzaken: bad CIDR 'not-a-cidr': 'not-a-cidr' {BAD_NET}",
        "invalid-policy-subnets.yaml: departments: Sociaal Domein: subnet 10.10.0.0/16 is also assigned to 'Burgerzaken'",
        "invalid-policy-subnets.yaml: departments: ICT: must be a list of CIDRs, not a string",
    ],
    "invalid-policy-top-level.yaml": [
        "invalid-policy-top-level.yaml: (top level): unknown key 'owner'",
        "invalid-policy-top-level.yaml: (top level): 'services' must be a mapping, not a list",
        "invalid-policy-top-level.yaml: (top level): missing required key 'version'",
    ],
    "invalid-policy-values.yaml": [
        f"invalid-policy-values.yaml: default: unknown policy 'allowed' (one of: {POLICY_VALUES})",
        f"invalid-policy-values.yaml: deepl: unknown policy 'allowed' (one of: {POLICY_VALUES})",
        "invalid-policy-values.yaml: chatgpt: no such service in the catalogue or encrypted_dns.yaml",
    ],
}


def _rules_with(fixture: Path, tmp_path: Path) -> tuple[Path, Path | None]:
    """A copy of rules/ with the fixture in its place; returns (rules dir, policy path or None)."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    kind = fixture.name.split("-")[1]
    if kind == "catalogue":
        shutil.copy(fixture, rules / "catalogue" / fixture.name)
        return rules, rules / POLICY_EXAMPLE.name
    if kind == "dns":
        shutil.copy(fixture, rules / "encrypted_dns.yaml")
        return rules, None  # the example policy names quad9, which the fixture drops
    assert kind == "policy", fixture.name
    shutil.copy(fixture, rules / fixture.name)
    return rules, rules / fixture.name


def test_every_invalid_fixture_has_pinned_problems() -> None:
    assert sorted(p.name for p in TESTDATA.glob("invalid-*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_invalid_fixture_yields_exactly_its_problems(fixture: str, tmp_path: Path) -> None:
    rules, policy = _rules_with(TESTDATA / fixture, tmp_path)
    assert [str(p) for p in check_rules(rules, policy)] == EXPECTED[fixture]


@pytest.mark.parametrize("fixture", sorted(f for f in EXPECTED if "-catalogue-" in f or "-dns-" in f))
def test_load_catalogue_raises_rules_error_with_every_problem(fixture: str, tmp_path: Path) -> None:
    rules, _ = _rules_with(TESTDATA / fixture, tmp_path)
    with pytest.raises(RulesError) as err:
        load_catalogue(rules)
    assert [str(p) for p in err.value.problems] == EXPECTED[fixture]
    assert str(err.value).splitlines() == EXPECTED[fixture]


def test_load_policy_without_catalogue_skips_the_unknown_service_check() -> None:
    with pytest.raises(RulesError) as err:
        load_policy(TESTDATA / "invalid-policy-values.yaml")
    assert [p.entry for p in err.value.problems] == ["default", "deepl"]


def test_repository_rules_and_example_policy_have_no_problems() -> None:
    assert check_rules(RULES, POLICY_EXAMPLE) == []


def test_every_file_in_rules_loads() -> None:
    files = sorted(p.relative_to(RULES).as_posix() for p in RULES.rglob("*") if p.is_file())
    catalogue = load_catalogue(RULES)
    read_by_catalogue = {f"catalogue/{p.name}" for p in (RULES / "catalogue").glob("*.yaml")}
    read_by_catalogue |= {"encrypted_dns.yaml", "sources.yaml"}
    for name in files:
        if name in read_by_catalogue:
            continue
        if name.startswith("policy") and name.endswith(".yaml"):
            load_policy(RULES / name, catalogue)
        else:
            assert name == "README.md", f"rules/{name} is read by nothing"
    # Every YAML file starts with a header comment.
    for name in files:
        if name.endswith(".yaml"):
            assert (RULES / name).read_text(encoding="utf-8").startswith("# "), name


def test_catalogue_keeps_every_tsv_service_and_field() -> None:
    catalogue = load_catalogue(RULES)
    assert len(catalogue.services) == 112
    for service in catalogue.services.values():
        assert service.jurisdiction in JURISDICTIONS
        assert service.category in CATEGORIES
        assert service.domains or service.ip_ranges
        assert all(rule.sources for rule in service.domains)
        assert not any(r.pattern.kind == "domain" and r.pattern.value in NEVER_PLAIN for r in service.domains)
    mistral = catalogue.services["mistral_lechat"]
    assert (mistral.jurisdiction, mistral.country, mistral.jurisdiction_note) == (
        "EU",
        "FR",
        "source: RAD France",
    )
    manus = catalogue.services["manus"]
    assert (manus.jurisdiction, manus.country, manus.jurisdiction_note) == ("other", "", "SG/CN; unverified")


def test_anthropic_api_carries_the_published_ip_ranges() -> None:
    ranges = load_catalogue(RULES).services["anthropic_api"].ip_ranges
    assert [(r.cidr, r.sources) for r in ranges][0] == ("160.79.104.0/23", ("ANT",))
    assert {r.cidr for r in ranges} >= {"160.79.104.0/23", "2607:6bc0::/48"}


def test_catalogue_version_is_stable_and_changes_with_content(tmp_path: Path) -> None:
    first, second = load_catalogue(RULES).version, load_catalogue(RULES).version
    assert first == second and first.startswith("112-")
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "catalogue" / "agent.yaml"
    path.write_text(
        path.read_text(encoding="utf-8") + "\n# a comment changes the content hash\n", encoding="utf-8"
    )
    assert load_catalogue(rules).version != first


def test_example_policy_has_the_documented_decisions() -> None:
    policy = load_policy(POLICY_EXAMPLE, load_catalogue(RULES))
    assert policy.version == "2026-01-15"
    assert policy.policy_for("ms_m365_copilot") is Policy.SANCTIONED
    assert policy.policy_for("deepl") is Policy.TOLERATED
    assert policy.policy_for("deepseek") is Policy.BLOCKED
    assert policy.policy_for("openai_chatgpt") is Policy.UNSANCTIONED


def test_encrypted_dns_lists_the_common_resolvers() -> None:
    catalogue = load_catalogue(RULES)
    resolvers = catalogue.resolver_matcher
    for name in (
        "dns.google",
        "cloudflare-dns.com",
        "mozilla.cloudflare-dns.com",
        "dns.quad9.net",
        "doh.opendns.com",
        "abc123.dns.nextdns.io",
        "doh.mullvad.net",
        "dns.adguard-dns.com",
    ):
        assert resolvers.match(name) is not None, name
    for name in ("api.opendns.com", "myip.opendns.com", "www.quad9.net"):
        assert resolvers.match(name) is None, name
    assert catalogue.resolver_ports == frozenset({443, 853})


def test_rule_problem_prints_as_file_entry_problem() -> None:
    assert str(RuleProblem("catalogue/x.yaml", "svc", "broken")) == "catalogue/x.yaml: svc: broken"


def test_converter_writes_a_catalogue_that_passes_the_checks(tmp_path: Path) -> None:
    """tools/convert_catalogue.py turns the TSV into files that load with no problems."""
    tsv = RULES.parent.parent / "shared" / "catalogue" / "ai_services.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not present")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_catalogue", RULES.parent / "tools" / "convert_catalogue.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rules"
    assert module.main(["--tsv", str(tsv), "--out", str(out)]) == 0
    assert module.main(["--tsv", str(tsv), "--out", str(out)]) == 1  # refuses to overwrite
    for name in ("sources.yaml", "encrypted_dns.yaml"):
        shutil.copy(RULES / name, out / name)
    assert check_rules(out) == []
    assert len(load_catalogue(out).services) == 112


def test_missing_files_and_stray_catalogue_files_are_reported(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "sources.yaml").unlink()
    (rules / "encrypted_dns.yaml").unlink()
    (rules / "catalogue" / "agent.yml").write_text("format: 1\nservices: []\n", encoding="utf-8")
    problems = [str(p) for p in check_rules(rules)]
    assert problems[0] == "sources.yaml: (file): missing"
    assert "catalogue/agent.yml: (file): not a .yaml file: not read" in problems
    assert problems[-1] == "encrypted_dns.yaml: (file): missing"
    # Without the legend every source is unknown: reported per entry, not as a crash.
    rest = [p for p in problems[1:-1] if not p.startswith("catalogue/agent.yml")]
    assert rest and all("unknown source abbreviation" in p for p in rest)


def test_empty_rules_directory_is_reported(tmp_path: Path) -> None:
    assert [str(p) for p in check_rules(tmp_path)] == [
        "sources.yaml: (file): missing",
        "catalogue: (directory): missing or empty: no catalogue files",
        "encrypted_dns.yaml: (file): missing",
    ]
