"""The synthetic municipality: departments and their subnets, the resolver and proxy, the
sites staff visit (ordinary and AI, with catalogue ids), and where each site lives.

Everything here is data plus pure functions of it; the scenario in office.py draws from it.
Subnets follow rules/policy.example.yaml (tests/synth checks they still do).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

RESOLVER = "10.10.0.53"
PROXY = "10.10.0.8"
PROXY_PORT = 8080

# (department, first client subnet (a /24 inside the policy's range), share of clients,
#  IPv6 /64 or ""). Names and ranges as in rules/policy.example.yaml.
DEPARTMENTS: tuple[tuple[str, str, float, str], ...] = (
    ("Burgerzaken", "10.10.1.0", 0.24, "2001:db8:10:1::"),
    ("Sociaal Domein", "10.20.1.0", 0.20, "2001:db8:20:1::"),
    ("Sociaal Domein - Jeugd", "10.20.8.0", 0.06, "2001:db8:20:8::"),
    ("Ruimte en Omgeving", "10.30.1.0", 0.18, "2001:db8:30:1::"),
    ("Bedrijfsvoering en ICT", "10.90.1.0", 0.14, "2001:db8:90:1::"),
    ("Gemeentehuis", "10.50.1.0", 0.10, "2001:db8:50:1::"),  # only the 10.0.0.0/8 catch-all holds it
    ("Gastennetwerk", "172.16.1.0", 0.08, ""),
)
# /24s a department may use from its first one: Jeugd is a /21, Sociaal Domein must stop below
# it (10.20.8.0/21 is Jeugd's); the others have a /16.
SUBNET_SPAN = {"10.20.8.0": 8, "10.20.1.0": 7}

# Address pools of the providers that host the sites (v4, v6); addresses inside are picked
# by hashing the host name, so a name always has the same addresses.
PROVIDERS: dict[str, tuple[str, str]] = {
    "cloudflare": ("104.18.0.0/19", "2606:4700:4400::/48"),
    "google": ("142.250.64.0/18", "2a00:1450:400e::/48"),
    "microsoft": ("13.107.0.0/18", "2620:1ec:40::/48"),
    "akamai": ("23.52.0.0/16", "2a02:26f0:ee00::/40"),
    "fastly": ("151.101.0.0/18", "2a04:4e42::/48"),
    "github": ("140.82.112.0/22", ""),
    "aws": ("18.158.0.0/16", "2a05:d014::/36"),
    "azure": ("20.50.0.0/16", ""),
    "ovh": ("51.159.0.0/16", "2001:bc8::/32"),
    "nl-gov": ("147.181.0.0/16", "2a00:8640::/32"),
    "nl-media": ("145.58.0.0/16", "2a02:29b8::/32"),
}


@dataclass(frozen=True, slots=True)
class Site:
    """A destination staff use.

    service: catalogue id (rules/catalogue) or None for an ordinary site.
    kind: traffic shape: web | chat | api | sync | cdn | mail.
    quic: browsers reach it over HTTP/3 when they can.
    cname: CNAME chain the resolver returns before the address records.
    weight: relative popularity within its group (ordinary, AI, developer AI).
    """

    host: str
    service: str | None
    provider: str
    kind: str
    weight: float
    quic: bool = False
    cname: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()  # well-known addresses instead of hashed ones (public resolvers)


ORDINARY: tuple[Site, ...] = (
    Site("www.overheid.nl", None, "nl-gov", "web", 6),
    Site("www.rijksoverheid.nl", None, "nl-gov", "web", 5),
    Site("login.microsoftonline.com", None, "microsoft", "api", 10,
         cname=("login.mso.msidentity.com", "ak.privatelink.msidentity.com", "www.tm.ak.prd.aadg.akadns.net")),
    Site("outlook.office365.com", None, "microsoft", "mail", 12,
         cname=("outlook.ha.office365.com", "outlook.ms-acdc.office.com")),
    Site("teams.microsoft.com", None, "microsoft", "sync", 9, cname=("teams-office-com.s-0005.dc-msedge.net",)),
    Site("www.google.com", None, "google", "web", 9, quic=True),
    Site("www.bing.com", None, "akamai", "web", 3,
         cname=("www-www.bing.com.trafficmanager.net", "www.bing.com.edgekey.net", "e86303.dscx.akamaiedge.net")),
    Site("nos.nl", None, "nl-media", "web", 4),
    Site("www.nu.nl", None, "fastly", "web", 4),
    Site("cdn.jsdelivr.net", None, "fastly", "cdn", 4, cname=("jsdelivr.map.fastly.net",)),
    Site("github.com", None, "github", "web", 3),
    Site("crypto.cloudflare.com", None, "cloudflare", "web", 1),  # serves ECH: outer SNI cloudflare-ech.com
)

AI: tuple[Site, ...] = (
    Site("chatgpt.com", "openai_chatgpt", "cloudflare", "chat", 25),
    Site("copilot.microsoft.com", "ms_copilot_consumer", "akamai", "chat", 8,
         cname=("copilot.microsoft.com.edgekey.net", "e28578.d.akamaiedge.net")),
    Site("m365.cloud.microsoft", "ms_m365_copilot", "microsoft", "chat", 10),
    Site("gemini.google.com", "google_gemini", "google", "chat", 8, quic=True),
    Site("notebooklm.google.com", "google_notebooklm", "google", "chat", 2, quic=True),
    Site("claude.ai", "anthropic_claude", "cloudflare", "chat", 8),
    Site("www.deepl.com", "deepl", "ovh", "chat", 8),
    Site("capi.grammarly.com", "grammarly", "aws", "sync", 6),
    Site("www.perplexity.ai", "perplexity", "cloudflare", "chat", 5),
    Site("chat.mistral.ai", "mistral_lechat", "ovh", "chat", 4),
    Site("chat.deepseek.com", "deepseek", "cloudflare", "chat", 2),
    Site("grok.com", "xai_grok", "cloudflare", "chat", 2),
    Site("huggingface.co", "huggingface", "aws", "web", 3),
)

DEVELOPER_AI: tuple[Site, ...] = (
    Site("api.openai.com", "openai_api", "cloudflare", "api", 5),
    Site("api.anthropic.com", "anthropic_api", "cloudflare", "api", 4),
    Site("api.githubcopilot.com", "github_copilot", "github", "api", 6),
)

ENCRYPTED_DNS = {  # resolver id (rules/encrypted_dns.yaml) -> (address, port, SNI)
    "google_public_dns": ("8.8.8.8", 443, "dns.google"),
    "cloudflare_dns": ("1.1.1.1", 853, "one.one.one.one"),
}

ECH_PUBLIC_NAME = "cloudflare-ech.com"  # Cloudflare's ECH outer SNI
# Hosts only the special cases use: an API reached by a legacy client without SNI, and the
# DoH resolver's name (its well-known addresses, rules/encrypted_dns.yaml).
EXTRA: tuple[Site, ...] = (
    Site("api.deepl.com", "deepl", "ovh", "api", 0),
    Site("dns.google", "google_public_dns", "google", "api", 0, fixed=("8.8.8.8", "8.8.4.4")),
)

# Plain-HTTP hosts: Windows' connectivity check, and an AI vendor's http:// redirect.
HTTP_SITES: tuple[Site, ...] = (
    Site("www.msftconnecttest.com", None, "akamai", "web", 1),
    Site("www.deepl.com", "deepl", "ovh", "web", 1),
)

SITES_BY_HOST: dict[str, Site] = {s.host: s for s in ORDINARY + AI + DEVELOPER_AI + EXTRA + HTTP_SITES}


def _pick(pool: str, host: str, salt: int) -> str:
    net = ipaddress.ip_network(pool)
    h = int.from_bytes(hashlib.sha256(f"{host}#{salt}".encode()).digest()[:8], "big")
    return str(net[1 + h % (net.num_addresses - 2)])


@lru_cache(maxsize=1024)
def site_addresses(site: Site, *, v6: bool = False, count: int = 2) -> tuple[str, ...]:
    """The site's A (or AAAA) addresses: stable, distinct per name, inside its provider's pool."""
    if site.fixed and not v6:
        return site.fixed[:count]
    pool = PROVIDERS[site.provider][1 if v6 else 0]
    if not pool:
        return ()
    return tuple(_pick(pool, site.host, i) for i in range(count))


def department_client(dept_index: int, n: int) -> tuple[str, str]:
    """The n-th client address (IPv4, IPv6 or "") of a department: hosts .10-.249 of
    consecutive /24s (as many as the department's range holds, then wrapping around)."""
    _, base, _, v6base = DEPARTMENTS[dept_index]
    span = SUBNET_SPAN.get(base, 250)
    net, host = divmod(n, 240)
    b0 = ipaddress.ip_address(base)
    v4 = str(b0 + (net % span) * 256 + 10 + host)
    v6 = str(ipaddress.ip_address(v6base) + 0x100 + n) if v6base else ""
    return v4, v6
