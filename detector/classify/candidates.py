"""AI-looking names that are not in the catalogue: the review queue for new services.

A candidate is only a hint for a person to review (`shadowai report` lists them); it never
attributes traffic to a service. The rules trade recall for a low false-positive rate on
ordinary names: short, common words ("ai", "chat", "claude") count only as whole tokens (a
label, or a part of a label between '-' or '_'), so `mail`, `thai`, `dubai`, `quic.aiortc.org`,
`chat.google.com` and `jeanclaude.fr` are not candidates, while `ai.example.com`,
`my-ai-tool.io`, `llmhub.dev` and any `.ai` name are. A `.ai` name that is no AI service (such as
darksail.ai) is a tolerated false positive: the TLD is the strongest cheap signal there is.

Which names were already reported is state; the caller keeps that (bounded).
"""

from __future__ import annotations

import re

from detector.classify.matcher import MAX_NAME_LEN, normalise_name

# Whole tokens that mark a name as AI-looking on their own.
TOKENS = frozenset(
    {
        "ai",
        "genai",
        "llm",
        "llms",
        "gpt",
        "chatgpt",
        "openai",
        "copilot",
        "claude",
        "gemini",
        "anthropic",
        "mistral",
        "ollama",
        "deepseek",
        "chatbot",
        "chatbots",
        "aichat",
        "vllm",
        "lmstudio",
        "huggingface",
        "langchain",
        "llama",
        "qwen",
    }
)
# Substrings distinctive enough to count inside any label ("gpt4o", "mycopilot", "openaiproxy").
# No English word contains them, which keeps them free of false positives.
SUBSTRINGS = (
    "gpt",
    "openai",
    "genai",
    "copilot",
    "chatbot",
    "deepseek",
    "anthropic",
    "huggingface",
    "ollama",
)
# Label prefixes and suffixes that count without a separator ("llmhub", "claudecode", "getllm";
# not "fullmoon", "smallmedia", "jeanclaude").
PREFIXES = ("llm", "claude")
SUFFIXES = ("llm",)
# Weak tokens: a name needs "chat" plus one of these ("chat-assistant.example").
WEAK_PAIR = (
    "chat",
    frozenset({"bot", "bots", "assistant", "agent", "agents", "prompt", "prompts", "inference"}),
)
AI_TLD = "ai"
# Reverse-DNS and link-local names carry no vendor name.
IGNORED_SUFFIXES = (".in-addr.arpa", ".ip6.arpa", ".local", ".home.arpa")

_TOKEN_SPLIT = re.compile(r"[-_]")


def candidate_reason(hostname: str) -> str:
    """Why a name looks like an AI service ("" if it does not): for reports and `rules match`."""
    if len(hostname) > MAX_NAME_LEN:
        return ""  # not a DNS name
    name = normalise_name(hostname)
    if not name or name.endswith(IGNORED_SUFFIXES):
        return ""
    labels = name.split(".")
    if len(labels) < 2:
        return ""  # a single label is a local host name, not a service
    if labels[-1] == AI_TLD:
        return "the .ai top-level domain"
    for label in labels[:-1]:
        reason = _label_reason(label)
        if reason:
            return reason
    return ""


def looks_like_ai(hostname: str) -> bool:
    """Whether a hostname looks like an AI service (see the module docstring for the rules)."""
    return bool(candidate_reason(hostname))


def _label_reason(label: str) -> str:
    for sub in SUBSTRINGS:
        if sub in label:
            return f"'{sub}' in label '{label}'"
    tokens = _TOKEN_SPLIT.split(label)
    for token in tokens:
        if token in TOKENS:
            return f"token '{token}' in label '{label}'"
    for prefix in PREFIXES:
        if label.startswith(prefix):
            return f"label '{label}' starts with '{prefix}'"
    for suffix in SUFFIXES:
        if label.endswith(suffix):
            return f"label '{label}' ends with '{suffix}'"
    weak, partners = WEAK_PAIR
    if weak in tokens and partners.intersection(tokens):
        return f"tokens '{weak}' and '{sorted(partners.intersection(tokens))[0]}' in label '{label}'"
    return ""
