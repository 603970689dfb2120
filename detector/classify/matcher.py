"""Hostname and address → catalogue match, by the pattern semantics of rules/README.md.

Pattern kinds (borrowed from v2fly/domain-list-community):
  plain   `openai.com`         the domain itself and every subdomain, by whole labels
                               (`notchatgpt.com` is not `chatgpt.com`)
  full:   `full:api.openai.com` that one host only
  regexp: `regexp:^…$`         a Python regular expression, fullmatch on the whole name

Precedence, most specific first: a `full:` pattern for the exact name; then the plain pattern
with the longest label suffix (the name itself, then each parent); then regexps, which are only
tried when no exact/suffix pattern matched. Regexps exist in the catalogue only for hosts under
shared apexes (azure.com, googleapis.com, amazonaws.com) that no plain pattern may claim, so
trying them last costs nothing in precision and keeps regexps off the common path. A regexp
written under another service's plain domain would never win; `check_rules` finds that through
the examples every regexp must carry.

Names are compared lower-cased with trailing dots removed. The hot path is one dict probe per
label suffix; results are memoised in a bounded LRU because the same names recur constantly
(every flow to chatgpt.com repeats the same SNI).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from detector.classify.iptable import Network, PrefixTable
from detector.model import Match

# RFC 1035 §2.3.4: 255 octets on the wire = at most 253 characters in text, plus one trailing
# dot. Longer names are not hostnames; they are answered "no match" without touching the cache,
# so a hostile 64 kB SNI can neither match nor bloat the memo.
MAX_NAME_LEN = 254

# Distinct names seen in a busy office hour are a few thousand; 8192 keeps the hit ratio high
# while bounding the memo to well under 2 MB of keys.
MATCH_CACHE_SIZE = 8192

KIND_FULL = "full"
KIND_DOMAIN = "domain"
KIND_REGEXP = "regexp"
KIND_IP_RANGE = "ip-range"

_FULL_PREFIX = "full:"
_REGEXP_PREFIX = "regexp:"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_TYPE_PREFIX_RE = re.compile(r"[a-z]+:")
# Characters that stand for themselves in a regexp when unescaped, as far as hostnames go.
_LITERAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(slots=True, frozen=True)
class Pattern:
    """One parsed catalogue pattern.

    text: as written in rules/ (what `Match.pattern` reports).
    kind: "full" | "domain" | "regexp".
    value: the host for full/domain, the regexp source for regexp.
    regex: the compiled regexp (regexp kind only).
    literal_suffix: a string every name the regexp matches ends with ("" if none was found);
      the prefilter that keeps most names away from the regexp.
    """

    text: str
    kind: str
    value: str
    regex: re.Pattern[str] | None = None
    literal_suffix: str = ""


def normalise_name(name: str) -> str:
    """Lower-case and drop trailing dots: the form every comparison uses."""
    return name.lower().rstrip(".")


def parse_pattern(text: object) -> Pattern | str:
    """Parse one `domains` entry; an error message (str) if it is not a valid pattern."""
    if not isinstance(text, str):
        return f"pattern must be a string, not {type(text).__name__}"
    if text.startswith(_REGEXP_PREFIX):
        source = text[len(_REGEXP_PREFIX) :]
        if not source:
            return "empty regexp"
        try:
            regex = re.compile(source)
        except re.error as exc:
            return f"bad regexp: {exc}"
        return Pattern(text, KIND_REGEXP, source, regex, regexp_literal_suffix(source))
    if text.startswith(_FULL_PREFIX):
        kind, host = KIND_FULL, text[len(_FULL_PREFIX) :]
    else:
        prefix = _TYPE_PREFIX_RE.match(text)
        if prefix:
            return f"unknown pattern type '{prefix.group()}' (use a plain domain, full: or regexp:)"
        kind, host = KIND_DOMAIN, text
    problem = _host_problem(host)
    if problem:
        return problem
    return Pattern(text, kind, host)


def _host_problem(host: str) -> str:
    """Why `host` cannot stand in a plain or full: pattern ("" if it can)."""
    if not host:
        return "empty host name"
    if host.startswith("*."):
        return "no wildcard needed: a plain pattern already covers every subdomain"
    if "." not in host.rstrip("."):
        return "needs at least two labels (a single label would match a whole TLD)"
    if host != host.lower() or host.endswith("."):
        return "must be written lower-case without a trailing dot"
    if len(host) > MAX_NAME_LEN - 1 or not _HOST_RE.fullmatch(host):
        return "not a valid domain name (letters, digits, '-' and '_' in dot-separated labels)"
    return ""


def regexp_literal_suffix(source: str) -> str:
    """The literal text that every match of `source` must end with, or "" if none is evident.

    Reads the regexp backwards from its closing `$` over escaped dots/hyphens and plain
    letters and digits, stopping at anything else (quantifier, class, group, alternation).
    Alternation anywhere makes the answer "" because `|` may split the tail.
    """
    if "|" in source:
        return ""
    if source.endswith(r"\Z"):
        body = source[:-2]
    elif source.endswith("$") and not source.endswith(r"\$"):
        body = source[:-1]
    else:
        body = source  # fullmatch anchors the end anyway
    out: list[str] = []
    i = len(body) - 1
    while i >= 0:
        ch = body[i]
        j = i - 1
        while j >= 0 and body[j] == "\\":
            j -= 1
        if (i - 1 - j) % 2 == 1:  # an odd run of backslashes escapes `ch`
            if ch not in ".-":
                break  # \d, \w, \S …: a class, not a literal
            out.append(ch)
            i -= 2
        elif ch in _LITERAL_CHARS or ch == "-":
            out.append(ch)
            i -= 1
        else:
            break  # quantifier, class, group, anchor or an unescaped "." (any char)
    return "".join(reversed(out))


def _prefilter_key(literal_suffix: str) -> str:
    """The last two complete labels of a literal suffix ("" if it has fewer): the bucket key."""
    labels = literal_suffix.split(".")
    complete = labels if literal_suffix.startswith(".") else labels[1:]
    complete = [label for label in complete if label]
    if len(complete) < 2:
        return ""
    return ".".join(complete[-2:])


def _name_key(name: str) -> str:
    """The last two labels of a name: the prefilter bucket it may fall in."""
    last = name.rfind(".")
    if last <= 0:
        return ""
    return name[name.rfind(".", 0, last) + 1 :]


class Matcher:
    """Immutable hostname/address matcher over (owner id, pattern) entries.

    The first entry for a given full host, plain domain or CIDR wins; duplicates are rules
    errors that `check_rules` reports, so the order only matters for broken rules. Regexps are
    tried in entry order.
    """

    def __init__(
        self,
        patterns: Iterable[tuple[str, Pattern]],
        ip_ranges: Iterable[tuple[str, str, Network]] = (),
        cache_size: int = MATCH_CACHE_SIZE,
    ) -> None:
        self._full: dict[str, Match] = {}
        self._domain: dict[str, Match] = {}
        self._regexps: list[tuple[Pattern, Match]] = []
        self._rx_buckets: dict[str, list[tuple[str, re.Pattern[str], Match]]] = {}
        self._rx_always: list[tuple[re.Pattern[str], Match]] = []
        for owner, pat in patterns:
            match = Match(owner, pat.text, pat.kind)
            if pat.kind == KIND_FULL:
                self._full.setdefault(pat.value, match)
            elif pat.kind == KIND_DOMAIN:
                self._domain.setdefault(pat.value, match)
            elif pat.regex is not None:
                self._regexps.append((pat, match))
                key = _prefilter_key(pat.literal_suffix)
                if key:
                    self._rx_buckets.setdefault(key, []).append((pat.literal_suffix, pat.regex, match))
                else:
                    self._rx_always.append((pat.regex, match))
        self._ranges = PrefixTable((net, Match(owner, cidr, KIND_IP_RANGE)) for owner, cidr, net in ip_ranges)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup)

    # -- hot path ---------------------------------------------------------------------------

    def match(self, hostname: str) -> Match | None:
        """The most specific catalogue match for a hostname, or None. Never raises on a str."""
        if len(hostname) > MAX_NAME_LEN:
            return None
        return self._cached(hostname)

    def match_ip(self, addr: bytes) -> Match | None:
        """The ip_ranges match (kind "ip-range") for a packed 4- or 16-byte address, or None."""
        return self._ranges.lookup(addr)

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the match memo (for metrics and benchmarks)."""
        return self._cached.cache_info()

    def _lookup(self, hostname: str) -> Match | None:
        name = normalise_name(hostname)
        hit = self._full.get(name)
        if hit is not None:
            return hit
        hit = self._suffix(name)
        if hit is not None:
            return hit
        return self._regexp(name)

    def _suffix(self, name: str) -> Match | None:
        domain = self._domain
        pos = -1
        while True:
            hit = domain.get(name[pos + 1 :])
            if hit is not None:
                return hit
            pos = name.find(".", pos + 1)
            if pos < 0:
                return None

    def _regexp(self, name: str) -> Match | None:
        bucket = self._rx_buckets.get(_name_key(name))
        if bucket:
            for suffix, regex, match in bucket:
                if name.endswith(suffix) and regex.fullmatch(name):
                    return match
        for regex, match in self._rx_always:
            if regex.fullmatch(name):
                return match
        return None

    # -- for `shadowai rules match` ------------------------------------------------------------

    def explain(self, hostname: str) -> str:
        """A human-readable account of which patterns were considered for a name and which won."""
        if len(hostname) > MAX_NAME_LEN:
            head = f"name: {hostname[:60]}… ({len(hostname)} characters)"
            return f"{head}\nresult: no match (longer than a DNS name)"
        name = normalise_name(hostname)
        winner = self.match(hostname)
        lines = [f"name: {name}" + (f" (written {hostname!r})" if name != hostname else "")]
        lines.append("  considered, most specific first:")
        full = self._full.get(name)
        lines.append(self._explain_line("full", name, full, winner))
        pos = -1
        while True:
            suffix = name[pos + 1 :]
            if "." in suffix:
                lines.append(self._explain_line("domain", suffix, self._domain.get(suffix), winner))
            pos = name.find(".", pos + 1)
            if pos < 0:
                break
        exact_hit = full is not None or self._suffix(name) is not None
        key = _name_key(name)
        for pat, match in self._regexps:
            matched = pat.regex is not None and pat.regex.fullmatch(name) is not None
            if not matched:
                continue
            if exact_hit:
                note = "matches, but not tried: an exact/suffix pattern matched first"
            elif match == winner:
                note = "<- wins (no exact/suffix pattern matched)"
            else:
                note = "matches, but an earlier regexp won"
            lines.append(f"    regexp  {pat.value}  -> {match.service}  {note}")
        n_rx = len(self._regexps)
        bucket = len(self._rx_buckets.get(key, ())) + len(self._rx_always)
        lines.append(f"  regexps: {n_rx} in the catalogue, {bucket} pass the prefilter for this name")
        if winner is None:
            lines.append("result: no match")
        else:
            lines.append(f"result: {winner.service} via {winner.kind} pattern {winner.pattern!r}")
        return "\n".join(lines)

    @staticmethod
    def _explain_line(kind: str, key: str, hit: Match | None, winner: Match | None) -> str:
        if hit is None:
            return f"    {kind:<7} {key}  -> -"
        note = "<- wins" if hit == winner else "(less specific, not used)"
        return f"    {kind:<7} {key}  -> {hit.service} (pattern {hit.pattern!r})  {note}"
