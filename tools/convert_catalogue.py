#!/usr/bin/env python3
"""One-off converter: ../shared/catalogue/ai_services.tsv -> rules/catalogue/<category>.yaml.

Run from the repository root:

    python3 tools/convert_catalogue.py [--tsv ../shared/catalogue/ai_services.tsv] [--out rules]

It wrote the first version of rules/catalogue/. Since then the YAML files are the source of truth
and are edited by hand: running this again overwrites rules/catalogue/ and loses those edits (it
refuses to unless --force is given). What it does beyond a straight copy:

- jurisdiction "EU (FR)" -> jurisdiction EU, country FR; qualifiers such as "unverified" and the
  notes' trailing "[juris: …]" tag move to jurisdiction_note;
- the TSV names sources per service, not per pattern: every pattern gets the service's source
  abbreviations (narrow them by hand once a pattern is verified against one source);
- adds ip_ranges for anthropic_api (ANT: platform.claude.com/docs api/ip-addresses) and an example
  name for every regexp (check_rules requires one, to prove the regexp is not shadowed);
- checks that the files it wrote load back to exactly the data it meant to write.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import re
import sys
import textwrap
from pathlib import Path

import yaml

# ip_ranges the TSV only mentions in notes; source ANT (inbound ranges of the Anthropic API).
EXTRA_IP_RANGES = {
    "anthropic_api": [
        ("160.79.104.0/23", ["ANT"]),
        ("153.61.224.0/22", ["ANT"]),
        ("2607:6bc0::/48", ["ANT"]),
    ],
}

# One name per regexp that it must match and win (checked by check_rules).
REGEXP_EXAMPLES = {
    r"regexp:^chatgpt-async-webps-prod-\S+-\d+\.webpubsub\.azure\.com$": [
        "chatgpt-async-webps-prod-westeurope-1.webpubsub.azure.com",
    ],
    r"regexp:^[a-z0-9-]+-aiplatform\.googleapis\.com$": ["europe-west4-aiplatform.googleapis.com"],
    r"regexp:^bedrock(-runtime)?\.[a-z0-9-]+\.amazonaws\.com$": [
        "bedrock-runtime.eu-central-1.amazonaws.com",
        "bedrock.eu-west-1.amazonaws.com",
    ],
}

# TSV country/region codes -> ISO 3166-1 alpha-2 for the `country` field.
ISO_COUNTRY = {"UK": "GB"}
SINGLE_CODES = {"US", "CN", "UK", "CH", "CA", "IL"}

CATEGORY_TITLES = {
    "chat_assistant": "Chat assistants (web, desktop and mobile chat front-ends)",
    "model_api": "Model APIs and inference platforms (programmatic use)",
    "code_assistant": "Code assistants, AI IDEs and app builders",
    "agent": "Agents and agent/workflow builders",
    "ai_search": "AI search and research assistants",
    "image_video_audio_gen": "Image, video, voice and music generation",
    "translation_writing": "Translation, writing and presentation tools",
    "transcription_meeting": "Transcription and meeting note-takers",
    "productivity_embedded_ai": "SaaS with embedded AI (not separable from the SaaS by name)",
    "local_model_tooling": "Local-model tooling (downloads indicate local LLM use)",
}

SERVICE_KEYS = (
    "id",
    "name",
    "vendor",
    "jurisdiction",
    "country",
    "jurisdiction_note",
    "category",
    "domains",
    "ip_ranges",
    "sources",
    "notes",
)


def split_sources(text: str) -> list[str]:
    """Split "A:x; B:y (p; q)" on "; " outside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and text.startswith("; ", i):
            out.append(text[start:i].strip())
            start = i + 2
    out.append(text[start:].strip())
    return [s for s in out if s]


def abbreviations(sources: list[str]) -> list[str]:
    """The distinct source abbreviations ("V2F" from "V2F:data/openai"), in order."""
    return list(dict.fromkeys(s.split(":", 1)[0] for s in sources))


def jurisdiction(raw: str, juris_tag: str) -> dict[str, str]:
    """TSV jurisdiction + the notes' [juris: …] tag -> jurisdiction, country, jurisdiction_note."""
    m = re.fullmatch(r"([A-Za-z/]+)(?: \((.*)\))?", raw.strip())
    if not m:
        raise ValueError(f"unreadable jurisdiction {raw!r}")
    code, detail = m.group(1), m.group(2) or ""
    parts = [p.strip() for p in detail.split(",") if p.strip()]
    qualifiers = [p for p in parts if not re.fullmatch(r"[A-Z]{2}", p)]
    countries = [p for p in parts if re.fullmatch(r"[A-Z]{2}", p)]
    out: dict[str, str] = {}
    if code == "IL/US":  # tabnine: TSV "IL/US (conflicting)"
        out["jurisdiction"], countries = "IL", ["IL"]
        qualifiers = [
            "conflicting: TSV says IL/US (RAD lists US; the company is commonly described as Israeli)"
        ]
    elif code in SINGLE_CODES:
        out["jurisdiction"] = code
        countries = countries or [code]
    elif code in ("EU", "other"):
        out["jurisdiction"] = code
    else:
        raise ValueError(f"unknown jurisdiction code {code!r}")
    if len(countries) == 1:
        out["country"] = ISO_COUNTRY.get(countries[0], countries[0])
    note = list(qualifiers)
    if juris_tag and not any(juris_tag in q for q in qualifiers):
        note.append(f"source: {juris_tag}")
    if note:
        out["jurisdiction_note"] = "; ".join(note)
    return out


def convert_row(row: dict[str, str]) -> dict[str, object]:
    """One TSV row -> one service mapping in rules/ form."""
    notes = row["notes"].strip()
    tag = re.search(r"\s*\[juris: ([^\]]*)\]\s*$", notes)
    if tag:
        notes = notes[: tag.start()].strip()
    sources = split_sources(row["source"])
    abbrs = abbreviations(sources)
    domains = []
    for pattern in row["domains"].split(","):
        entry: dict[str, object] = {"pattern": pattern.strip(), "sources": list(abbrs)}
        if pattern in REGEXP_EXAMPLES:
            entry["examples"] = REGEXP_EXAMPLES[pattern]
        domains.append(entry)
    service: dict[str, object] = {
        "id": row["service_id"],
        "name": row["service_name"],
        "vendor": row["vendor"],
        **jurisdiction(row["jurisdiction"], tag.group(1) if tag else ""),
        "category": row["category"],
        "domains": domains,
    }
    extra = EXTRA_IP_RANGES.get(row["service_id"])
    if extra:
        service["ip_ranges"] = [{"cidr": cidr, "sources": srcs} for cidr, srcs in extra]
    service["sources"] = sources
    if notes:
        service["notes"] = notes
    return {k: service[k] for k in SERVICE_KEYS if k in service}


# ---------------------------------------------------------------------------
# YAML writing: PyYAML cannot write comments or our compact layout, so emit by hand and
# check the result loads back to the same data.
# ---------------------------------------------------------------------------


_LOADER = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # libyaml when present: fast enough to probe every scalar


def scalar(value: object, flow: bool = False) -> str:
    """A YAML scalar: plain when that loads back to the same string, else single-quoted."""
    if not isinstance(value, str):
        return str(value)
    probe = f"k: [{value}]" if flow else f"k: {value}"
    try:
        loaded = yaml.load(probe, Loader=_LOADER)["k"]
        if (loaded == [value] if flow else loaded == value) and value == value.strip():
            return value
    except yaml.YAMLError:
        pass
    return "'" + value.replace("'", "''") + "'"


def flow_list(values: list[str]) -> str:
    return "[" + ", ".join(scalar(v, flow=True) for v in values) + "]"


def emit_service(s: dict[str, object]) -> list[str]:
    lines = [f"  - id: {scalar(s['id'])}"]
    for key in ("name", "vendor", "jurisdiction", "country", "jurisdiction_note", "category"):
        if key in s:
            lines.append(f"    {key}: {scalar(s[key])}")
    lines.append("    domains:")
    for d in s["domains"]:  # type: ignore[union-attr]
        text = f"      - {{pattern: {scalar(d['pattern'], flow=True)}, sources: {flow_list(d['sources'])}"
        if "examples" in d:
            text += f", examples: {flow_list(d['examples'])}"
        lines.append(text + "}")
    if "ip_ranges" in s:
        lines.append("    ip_ranges:")
        for r in s["ip_ranges"]:  # type: ignore[union-attr]
            lines.append(
                f"      - {{cidr: {scalar(r['cidr'], flow=True)}, sources: {flow_list(r['sources'])}}}"
            )
    lines.append("    sources:")
    for src in s["sources"]:  # type: ignore[union-attr]
        lines.append(f"      - {scalar(src)}")
    if "notes" in s:
        lines.append("    notes: >-")
        for line in textwrap.wrap(str(s["notes"]), width=92, break_long_words=False, break_on_hyphens=False):
            lines.append(f"      {line}")
    return lines


def emit_file(category: str, services: list[dict[str, object]], tsv_name: str) -> str:
    today = datetime.date.today().isoformat()
    head = [
        f"# AI-service catalogue: {CATEGORY_TITLES.get(category, category)}.",
        "#",
        "# Format, pattern semantics and how to add a service: rules/README.md.",
        f"# First written by tools/convert_catalogue.py from {tsv_name} on {today};",
        "# maintained by hand since. Source abbreviations: rules/sources.yaml.",
        "# Per-pattern sources are the service's sources as the TSV recorded them (it did not say",
        "# which source lists which pattern); narrow them when a pattern is verified.",
        "",
        "format: 1",
        "services:",
    ]
    body: list[str] = []
    for i, s in enumerate(services):
        if i:
            body.append("")
        body.extend(emit_service(s))
    return "\n".join(head + body) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tsv", type=Path, default=Path("../shared/catalogue/ai_services.tsv"))
    parser.add_argument("--out", type=Path, default=Path("rules"))
    parser.add_argument("--force", action="store_true", help="overwrite an existing rules/catalogue/")
    args = parser.parse_args(argv)

    out_dir = args.out / "catalogue"
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        print(
            f"{out_dir} already has files (edited by hand since?); use --force to overwrite", file=sys.stderr
        )
        return 1
    with args.tsv.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    by_category: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(convert_row(row))
    out_dir.mkdir(parents=True, exist_ok=True)
    for category, services in sorted(by_category.items()):
        path = out_dir / f"{category}.yaml"
        path.write_text(emit_file(category, services, "shared/catalogue/" + args.tsv.name), encoding="utf-8")
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
        if loaded != {"format": 1, "services": services}:
            print(f"{path}: does not load back to the converted data", file=sys.stderr)
            return 1
    print(f"wrote {len(rows)} services in {len(by_category)} files to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
