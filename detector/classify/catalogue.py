"""Loading and checking rules/: the AI-service catalogue, encrypted-DNS resolvers and the policy.

Every problem is collected as a `RuleProblem(file, entry, problem)` rather than raised at the
first one, so `shadowai rules check` can list them all as `file: entry: problem` lines; the
loaders raise one `RulesError` carrying the whole list. File formats: rules/README.md.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from detector.classify.iptable import Network, parse_network
from detector.classify.matcher import KIND_DOMAIN, Matcher, Pattern, normalise_name, parse_pattern
from detector.classify.policy import DEFAULT_POLICY, PolicyConfig
from detector.model import Policy

CATALOGUE_DIR = "catalogue"
ENCRYPTED_DNS_FILE = "encrypted_dns.yaml"
SOURCES_FILE = "sources.yaml"
FORMAT = 1  # the only rules file format this code reads

# Normalised jurisdiction codes; the detail ("FR", "unverified") lives in country/jurisdiction_note.
JURISDICTIONS = ("EU", "US", "CN", "UK", "CH", "CA", "IL", "other")

# Categories are metric labels: a closed list keeps their cardinality bounded.
CATEGORIES = (
    "chat_assistant",
    "model_api",
    "code_assistant",
    "agent",
    "ai_search",
    "image_video_audio_gen",
    "translation_writing",
    "transcription_meeting",
    "productivity_embedded_ai",
    "local_model_tooling",
)
ENCRYPTED_DNS_CATEGORY = "encrypted_dns"  # the category of events about public DoH/DoT resolvers

# Shared apexes (research/field-survey.md §6): never a plain pattern, because the apex and all its
# subdomains also serve search, mail, office, code hosting and cloud workloads that are not AI.
# Under them, use full: hosts or regexps.
NEVER_PLAIN = frozenset(
    {
        "google.com",
        "googleapis.com",
        "googleusercontent.com",
        "gstatic.com",
        "microsoft.com",
        "bing.com",
        "office.com",
        "github.com",
        "githubusercontent.com",
        "amazonaws.com",
        "azure.com",
        "adobe.com",
        "x.com",
        "baidu.com",
        "tencent.com",
        "aliyun.com",
        "proton.me",
        "livekit.cloud",
        "discord.com",
    }
)

_ID_RE = re.compile(r"[a-z0-9][a-z0-9_]*")
_ABBR_RE = re.compile(r"[A-Z][A-Z0-9]*")
_POLICY_VALUES = ", ".join(p.value for p in Policy)


# ---------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RuleProblem:
    """One problem in a rules file: `file` relative to the rules directory where possible,
    `entry` the service id / key / line it concerns, `problem` what is wrong."""

    file: str
    entry: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.problem}"


class RulesError(Exception):
    """The rules could not be loaded; `problems` lists every problem found."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(slots=True, frozen=True)
class DomainRule:
    """One `domains` entry: the parsed pattern, its source abbreviations, example names."""

    pattern: Pattern
    sources: tuple[str, ...]
    examples: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class IpRange:
    """One `ip_ranges` entry (or a resolver address): the CIDR as written and parsed."""

    cidr: str
    network: Network
    sources: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True, kw_only=True)
class Owner:
    """What catalogue services and encrypted-DNS resolvers share: events carry these fields."""

    id: str
    name: str
    vendor: str
    jurisdiction: str
    sources: tuple[str, ...]
    country: str = ""
    notes: str = ""
    file: str = ""  # the rules file it came from, relative to the rules directory


@dataclass(slots=True, frozen=True, kw_only=True)
class Service(Owner):
    """A catalogue entry: one AI service."""

    category: str
    domains: tuple[DomainRule, ...]
    ip_ranges: tuple[IpRange, ...]
    jurisdiction_note: str = ""


@dataclass(slots=True, frozen=True, kw_only=True)
class Resolver(Owner):
    """A public DoH/DoT resolver from encrypted_dns.yaml (its events have category "encrypted_dns")."""

    hostnames: tuple[Pattern, ...]
    addresses: tuple[IpRange, ...]

    @property
    def category(self) -> str:
        """Resolvers share one category so that events and metrics can tell them apart."""
        return ENCRYPTED_DNS_CATEGORY


@dataclass(slots=True, frozen=True)
class Catalogue:
    """The loaded rules directory. Immutable: a reload builds a new one.

    version: "<services>-<12 hex of sha256 over the rules files>", for metrics and reports.
    matcher: names/addresses -> catalogue services. resolver_matcher: -> resolvers.
    resolver_ports: server ports on which a resolver match means encrypted DNS.
    """

    services: Mapping[str, Service]
    resolvers: Mapping[str, Resolver]
    resolver_ports: frozenset[int]
    sources: Mapping[str, str]
    version: str
    matcher: Matcher
    resolver_matcher: Matcher


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def load_catalogue(rules_dir: Path) -> Catalogue:
    """Load catalogue/*.yaml, encrypted_dns.yaml and sources.yaml; RulesError lists all problems."""
    reader = _Reader(rules_dir)
    catalogue = reader.catalogue()
    if reader.problems:
        raise RulesError(reader.problems)
    return catalogue


def load_policy(path: Path, catalogue: Catalogue | None = None) -> PolicyConfig:
    """Load a policy file; with a catalogue, service ids it does not know are problems too."""
    reader = _Reader(path.parent)
    policy = reader.policy(path, catalogue)
    if reader.problems:
        raise RulesError(reader.problems)
    return policy


def check_rules(rules_dir: Path, policy_path: Path | None = None) -> list[RuleProblem]:
    """Every problem in the rules directory and (if given) the policy file; [] when all is well."""
    reader = _Reader(rules_dir)
    catalogue = reader.catalogue()
    if policy_path is not None:
        # The catalogue as far as it loaded: unknown ids in the policy are still found.
        reader.policy(policy_path, catalogue)
    return reader.problems


# ---------------------------------------------------------------------------
# YAML with duplicate-key detection
# ---------------------------------------------------------------------------


# libyaml's parser when PyYAML was built with it (several times faster); the same constructors.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that records duplicate mapping keys (PyYAML keeps the last one silently)."""

    duplicates: list[tuple[object, int]]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                loader.duplicates.append((key, key_node.start_mark.line + 1))
            seen.add(key)
        except TypeError:
            pass  # unhashable key: construct_mapping below reports it
    return _BaseLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "a mapping",
    type(None): "empty",
    datetime.date: "a date",
    datetime.datetime: "a date",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# The reader: one pass over the files, problems collected as it goes
# ---------------------------------------------------------------------------

# key -> (expected type, required)
_Spec = dict[str, tuple[type | tuple[type, ...], bool]]

_TOP_SPEC: _Spec = {"format": (int, True), "services": (list, True)}
# What services and resolvers both carry.
_OWNER_SPEC: _Spec = {
    "id": (str, True),
    "name": (str, True),
    "vendor": (str, True),
    "jurisdiction": (str, True),
    "country": (str, False),
    "sources": (list, True),
    "notes": (str, False),
}
_SERVICE_SPEC: _Spec = {
    **_OWNER_SPEC,
    "jurisdiction_note": (str, False),
    "category": (str, True),
    "domains": (list, False),
    "ip_ranges": (list, False),
}
_DOMAIN_SPEC: _Spec = {"pattern": (str, True), "sources": (list, True), "examples": (list, False)}
_RANGE_SPEC: _Spec = {"cidr": (str, True), "sources": (list, True)}
_DNS_TOP_SPEC: _Spec = {"format": (int, True), "ports": (list, True), "resolvers": (list, True)}
_RESOLVER_SPEC: _Spec = {**_OWNER_SPEC, "hostnames": (list, False), "addresses": (list, False)}
_SOURCES_SPEC: _Spec = {"format": (int, True), "sources": (dict, True)}
_POLICY_SPEC: _Spec = {
    "format": (int, True),
    "version": ((str, int, float, datetime.date), True),
    "default": (str, False),
    "services": (dict, False),
    "departments": (dict, False),
}


class _Reader:
    """Reads rules files into typed objects, appending a RuleProblem for everything wrong."""

    def __init__(self, rules_dir: Path) -> None:
        self.rules_dir = rules_dir
        self.problems: list[RuleProblem] = []
        self.file = ""

    # -- helpers --------------------------------------------------------------------------

    def problem(self, entry: str, text: str) -> None:
        self.problems.append(RuleProblem(self.file, entry, text))

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.rules_dir).as_posix()
        except ValueError:
            return str(path)

    def read_yaml(self, path: Path) -> object:
        """The parsed document, or None after recording why it could not be read."""
        self.file = self._rel(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.problem("(file)", "missing")
            return None
        except OSError as exc:
            self.problem("(file)", f"cannot read: {exc.strerror}")
            return None
        except UnicodeDecodeError:
            self.problem("(file)", "not UTF-8 text")
            return None
        loader = _Loader(text)
        loader.duplicates = []
        try:
            data = loader.get_single_data()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}" if mark else "(file)"
            self.problem(where, f"YAML error: {exc.problem or exc.context}")
            return None
        except yaml.YAMLError as exc:
            self.problem("(file)", f"YAML error: {exc}")
            return None
        finally:
            loader.dispose()
        for key, line in loader.duplicates:
            self.problem(f"line {line}", f"duplicate key '{key}'")
        return data

    def fields(self, node: object, entry: str, spec: _Spec) -> dict[str, Any] | None:
        """The keys of `spec` present in `node` with the right types; problems for the rest."""
        if not isinstance(node, dict):
            self.problem(entry, f"must be a mapping, not {_type_name(node)}")
            return None
        out: dict[str, Any] = {}
        for key, value in node.items():  # in file order, so problems read top to bottom
            if key not in spec:
                self.problem(entry, f"unknown key '{key}'")
                continue
            types = _tuple(spec[key][0])
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                expected = " or ".join(_TYPE_NAMES[t] for t in types)
                self.problem(entry, f"'{key}' must be {expected}, not {_type_name(value)}")
                continue
            out[key] = value
        for key, (_, required) in spec.items():
            if required and key not in node:
                self.problem(entry, f"missing required key '{key}'")
        return out

    def strings(self, values: list[Any], entry: str, what: str) -> tuple[str, ...]:
        """The string items of a list; a problem for each other item."""
        out = []
        for value in values:
            if isinstance(value, str):
                out.append(value)
            else:
                self.problem(entry, f"{what} must be strings, not {_type_name(value)}")
        return tuple(out)

    def check_format(self, fields: dict[str, Any]) -> None:
        if fields.get("format", FORMAT) != FORMAT:
            self.problem("format", f"unsupported format {fields['format']} (this version reads {FORMAT})")

    def entry_id(self, node: object, index: int, what: str) -> str:
        """The entry name for problems: its id if it has a usable one, else `what[index]`."""
        ident = node.get("id") if isinstance(node, dict) else None
        if isinstance(ident, str) and _ID_RE.fullmatch(ident):
            return ident
        if isinstance(ident, str):
            self.problem(f"{what}[{index}]", f"id '{ident}' must be lower-case letters, digits and '_'")
        return f"{what}[{index}]"

    def sources(self, f: dict[str, Any], entry: str, known: Mapping[str, str]) -> tuple[str, ...]:
        """A `sources` list: abbreviations (patterns, ranges) or "ABBR:detail" strings (services,
        resolvers); each ABBR must be in sources.yaml."""
        if "sources" not in f:
            return ()  # missing or mistyped: already reported
        out = self.strings(f["sources"], entry, "sources")
        if not out:
            self.problem(entry, "needs at least one source")
        for ref in out:
            abbr = ref.split(":", 1)[0]
            if abbr not in known:
                self.problem(entry, f"unknown source abbreviation '{abbr}' (see {SOURCES_FILE})")
        return out

    def jurisdiction(self, value: str, entry: str) -> None:
        if value not in JURISDICTIONS:
            self.problem(entry, f"unknown jurisdiction '{value}' (one of: {', '.join(JURISDICTIONS)})")

    # -- sources.yaml -----------------------------------------------------------------------

    def source_legend(self) -> Mapping[str, str]:
        doc = self.read_yaml(self.rules_dir / SOURCES_FILE)
        if doc is None:
            return {}
        top = self.fields(doc, "(top level)", _SOURCES_SPEC)
        if top is None:
            return {}
        self.check_format(top)
        legend: dict[str, str] = {}
        for abbr, text in top.get("sources", {}).items():
            if not isinstance(abbr, str) or not _ABBR_RE.fullmatch(abbr):
                self.problem(str(abbr), "abbreviation must be upper-case letters and digits")
            elif not isinstance(text, str) or not text.strip():
                self.problem(abbr, "needs a description")
            else:
                legend[abbr] = text
        return legend

    # -- catalogue ----------------------------------------------------------------------------

    def catalogue(self) -> Catalogue:
        legend = self.source_legend()
        services: dict[str, Service] = {}
        claims = _Claims()
        cat_dir = self.rules_dir / CATALOGUE_DIR
        paths = sorted(cat_dir.iterdir()) if cat_dir.is_dir() else []
        if not paths:
            self.file = CATALOGUE_DIR
            self.problem("(directory)", "missing or empty: no catalogue files")
        for path in paths:
            if path.suffix != ".yaml" or not path.is_file():
                self.file = self._rel(path)
                self.problem("(file)", "not a .yaml file: not read")
                continue
            for service in self.catalogue_file(path, legend, claims):
                if service.id in services:
                    self.problem(service.id, f"duplicate id (first defined in {services[service.id].file})")
                else:
                    services[service.id] = service
        matcher = Matcher(
            ((s.id, d.pattern) for s in services.values() for d in s.domains),
            ((s.id, r.cidr, r.network) for s in services.values() for r in s.ip_ranges),
        )
        self.check_examples(services, matcher)
        resolvers, ports = self.resolvers(legend, services, matcher)
        resolver_matcher = Matcher(
            ((r.id, p) for r in resolvers.values() for p in r.hostnames),
            ((r.id, a.cidr, a.network) for r in resolvers.values() for a in r.addresses),
        )
        return Catalogue(
            services=MappingProxyType(services),
            resolvers=MappingProxyType(resolvers),
            resolver_ports=frozenset(ports),
            sources=MappingProxyType(dict(legend)),
            version=self.version(len(services), paths),
            matcher=matcher,
            resolver_matcher=resolver_matcher,
        )

    def version(self, count: int, catalogue_paths: list[Path]) -> str:
        digest = hashlib.sha256()
        for path in [*catalogue_paths, self.rules_dir / ENCRYPTED_DNS_FILE, self.rules_dir / SOURCES_FILE]:
            digest.update(self._rel(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"(unreadable)")
        return f"{count}-{digest.hexdigest()[:12]}"

    def catalogue_file(self, path: Path, legend: Mapping[str, str], claims: _Claims) -> list[Service]:
        doc = self.read_yaml(path)
        if doc is None:
            return []
        top = self.fields(doc, "(top level)", _TOP_SPEC)
        if top is None:
            return []
        self.check_format(top)
        out = []
        for index, node in enumerate(top.get("services", [])):
            service = self.service(node, index, legend, claims)
            if service is not None:
                out.append(service)
        return out

    def service(self, node: object, index: int, legend: Mapping[str, str], claims: _Claims) -> Service | None:
        entry = self.entry_id(node, index, "services")
        f = self.fields(node, entry, _SERVICE_SPEC)
        if f is None:
            return None
        self.jurisdiction(f.get("jurisdiction", "other"), entry)
        if f.get("category", CATEGORIES[0]) not in CATEGORIES:
            self.problem(entry, f"unknown category '{f['category']}' (one of: {', '.join(CATEGORIES)})")
        sources = self.sources(f, entry, legend)
        domains = tuple(
            d for i, n in enumerate(f.get("domains", [])) if (d := self.domain(n, i, entry, legend, claims))
        )
        ranges = tuple(
            r
            for i, n in enumerate(f.get("ip_ranges", []))
            if (r := self.ip_range(n, i, entry, legend, claims))
        )
        if not _has_any(node, "domains", "ip_ranges"):
            self.problem(entry, "matches nothing: no domains and no ip_ranges")
        if entry != f.get("id") or not _complete(f, _SERVICE_SPEC):
            return None  # unusable id or required keys missing: already reported
        return Service(
            id=f["id"],
            name=f["name"],
            vendor=f["vendor"],
            jurisdiction=f["jurisdiction"],
            category=f["category"],
            domains=domains,
            ip_ranges=ranges,
            sources=sources,
            country=f.get("country", ""),
            jurisdiction_note=f.get("jurisdiction_note", ""),
            notes=f.get("notes", "").strip(),
            file=self.file,
        )

    def domain(
        self, node: object, index: int, entry: str, legend: Mapping[str, str], claims: _Claims
    ) -> DomainRule | None:
        f = self.fields(node, f"{entry}: domains[{index}]", _DOMAIN_SPEC)
        if f is None or "pattern" not in f:
            return None
        sources = self.sources(f, entry, legend)
        examples = self.strings(f.get("examples", []), entry, "examples")
        pattern = self.pattern(f["pattern"], entry, claims)
        if pattern is None:
            return None
        if pattern.regex is not None and not examples:
            self.problem(entry, f"pattern '{pattern.text}': a regexp needs at least one example name")
        return DomainRule(pattern, sources, examples)

    def pattern(self, text: str, entry: str, claims: _Claims) -> Pattern | None:
        parsed = parse_pattern(text)
        if isinstance(parsed, str):
            self.problem(entry, f"pattern '{text}': {parsed}")
            return None
        if parsed.kind == KIND_DOMAIN and parsed.value in NEVER_PLAIN:
            self.problem(
                entry,
                f"pattern '{text}': shared apex, never a plain pattern (use full: hosts or a regexp)",
            )
            return None
        other = claims.claim(("pattern", parsed.kind, parsed.value), entry, self.file)
        if other is not None:
            self.problem(entry, _claimed_twice(f"pattern '{text}'", entry, other))
            return None
        return parsed

    def ip_range(
        self, node: object, index: int, entry: str, legend: Mapping[str, str], claims: _Claims
    ) -> IpRange | None:
        f = self.fields(node, f"{entry}: ip_ranges[{index}]", _RANGE_SPEC)
        if f is None or "cidr" not in f:
            return None
        sources = self.sources(f, entry, legend)
        return self.network(f["cidr"], entry, claims, sources)

    def network(
        self, text: str, entry: str, claims: _Claims, sources: tuple[str, ...] = ()
    ) -> IpRange | None:
        net = parse_network(text)
        if isinstance(net, str):
            self.problem(entry, net)
            return None
        other = claims.claim(("network", net), entry, self.file)
        if other is not None:
            self.problem(entry, _claimed_twice(f"range {net}", entry, other))
            return None
        return IpRange(text, net, sources)

    def check_examples(self, services: Mapping[str, Service], matcher: Matcher) -> None:
        """Each example must match its own pattern and be won by its own service."""
        for service in services.values():
            self.file = service.file
            for rule in service.domains:
                for example in rule.examples:
                    self.check_example(service.id, rule.pattern, example, matcher)

    def check_example(self, service_id: str, pattern: Pattern, example: str, matcher: Matcher) -> None:
        name = normalise_name(example)
        if not _pattern_matches(pattern, name):
            self.problem(service_id, f"example '{example}' does not match pattern '{pattern.text}'")
            return
        won = matcher.match(name)
        if won is not None and won.service != service_id:
            why = " (regexps are tried only when no full/plain pattern matches)" if pattern.regex else ""
            self.problem(
                service_id, f"example '{example}' is won by {won.service}'s pattern '{won.pattern}'{why}"
            )

    # -- encrypted_dns.yaml ---------------------------------------------------------------------

    def resolvers(
        self, legend: Mapping[str, str], services: Mapping[str, Service], matcher: Matcher
    ) -> tuple[dict[str, Resolver], list[int]]:
        doc = self.read_yaml(self.rules_dir / ENCRYPTED_DNS_FILE)
        top = None if doc is None else self.fields(doc, "(top level)", _DNS_TOP_SPEC)
        if top is None:
            return {}, []
        self.check_format(top)
        ports = []
        for port in top.get("ports", []):
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                ports.append(port)
            else:
                self.problem("ports", f"'{port}' is not a port number")
        resolvers: dict[str, Resolver] = {}
        claims = _Claims()
        for index, node in enumerate(top.get("resolvers", [])):
            resolver = self.resolver(node, index, legend, claims, matcher)
            if resolver is None:
                continue
            if resolver.id in services or resolver.id in resolvers:
                where = services[resolver.id].file if resolver.id in services else self.file
                self.problem(resolver.id, f"duplicate id (first defined in {where})")
                continue
            resolvers[resolver.id] = resolver
        return resolvers, ports

    def resolver(
        self, node: object, index: int, legend: Mapping[str, str], claims: _Claims, matcher: Matcher
    ) -> Resolver | None:
        entry = self.entry_id(node, index, "resolvers")
        f = self.fields(node, entry, _RESOLVER_SPEC)
        if f is None:
            return None
        self.jurisdiction(f.get("jurisdiction", "other"), entry)
        sources = self.sources(f, entry, legend)
        hostnames = []
        for text in self.strings(f.get("hostnames", []), entry, "hostnames"):
            pattern = self.pattern(text, entry, claims)
            if pattern is None:
                continue
            hit = matcher.match(pattern.value) if pattern.regex is None else None
            if hit is not None:
                self.problem(entry, f"hostname '{text}' is also matched by catalogue service {hit.service}")
                continue
            hostnames.append(pattern)
        addresses = tuple(
            a
            for t in self.strings(f.get("addresses", []), entry, "addresses")
            if (a := self.network(t, entry, claims))
        )
        if not _has_any(node, "hostnames", "addresses"):
            self.problem(entry, "matches nothing: no hostnames and no addresses")
        if entry != f.get("id") or not _complete(f, _RESOLVER_SPEC):
            return None
        return Resolver(
            id=f["id"],
            name=f["name"],
            vendor=f["vendor"],
            jurisdiction=f["jurisdiction"],
            hostnames=tuple(hostnames),
            addresses=addresses,
            sources=sources,
            country=f.get("country", ""),
            notes=f.get("notes", "").strip(),
            file=self.file,
        )

    # -- policy ---------------------------------------------------------------------------------

    def policy(self, path: Path, catalogue: Catalogue | None) -> PolicyConfig:
        doc = self.read_yaml(path)
        top = None if doc is None else self.fields(doc, "(top level)", _POLICY_SPEC)
        if top is None:
            return PolicyConfig(version="")
        self.check_format(top)
        default = self.policy_value(top.get("default", DEFAULT_POLICY.value), "default") or DEFAULT_POLICY
        decisions: dict[str, Policy] = {}
        for service_id, value in top.get("services", {}).items():
            entry = str(service_id)
            decision = self.policy_value(value, entry)
            known = catalogue is None or service_id in catalogue.services or service_id in catalogue.resolvers
            if not known:
                self.problem(entry, "no such service in the catalogue or encrypted_dns.yaml")
            elif decision is not None:
                decisions[entry] = decision
        subnets = self.departments(top.get("departments", {}))
        return PolicyConfig(str(top.get("version", "")), default, decisions, tuple(subnets))

    def policy_value(self, value: object, entry: str) -> Policy | None:
        try:
            return Policy(value)
        except ValueError:
            self.problem(entry, f"unknown policy '{value}' (one of: {_POLICY_VALUES})")
            return None

    def departments(self, node: dict[Any, Any]) -> list[tuple[Network, str]]:
        subnets: list[tuple[Network, str]] = []
        claims = _Claims()
        for name, cidrs in node.items():
            entry = f"departments: {name}"
            if not isinstance(name, str) or not name.strip():
                self.problem(entry, "a department name must be a non-empty string")
                continue
            if not isinstance(cidrs, list):
                self.problem(entry, f"must be a list of CIDRs, not {_type_name(cidrs)}")
                continue
            for text in self.strings(cidrs, entry, "subnets"):
                net = parse_network(text)
                if isinstance(net, str):
                    self.problem(entry, net)
                    continue
                other = claims.claim(("subnet", net), name, self.file)
                if other is not None:
                    self.problem(entry, f"subnet {net} is also assigned to '{other[0]}'")
                    continue
                subnets.append((net, name))
        return subnets


class _Claims:
    """Who claimed a pattern, range or subnet first, to report the second claimant."""

    def __init__(self) -> None:
        self._owners: dict[object, tuple[str, str]] = {}

    def claim(self, key: object, owner: str, file: str) -> tuple[str, str] | None:
        """None if `key` is new (now owned by `owner`), else the (owner, file) that has it."""
        first = self._owners.get(key)
        if first is None:
            self._owners[key] = (owner, file)
        return first


def _claimed_twice(what: str, entry: str, other: tuple[str, str]) -> str:
    owner, file = other
    if owner == entry:
        return f"{what} is listed twice"
    return f"{what} is also claimed by {owner} ({file})"


def _pattern_matches(pattern: Pattern, name: str) -> bool:
    """Whether a name matches one pattern by its own semantics (ignoring precedence)."""
    if pattern.regex is not None:
        return pattern.regex.fullmatch(name) is not None
    if pattern.kind == KIND_DOMAIN:
        return name == pattern.value or name.endswith("." + pattern.value)
    return name == pattern.value


def _has_any(node: object, *keys: str) -> bool:
    """Whether a mapping has a non-empty value under any of the keys (whatever its type)."""
    return isinstance(node, dict) and any(node.get(key) for key in keys)


def _complete(fields: dict[str, Any], spec: _Spec) -> bool:
    """All required keys are present with the right types."""
    return all(key in fields for key, (_, required) in spec.items() if required)


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
