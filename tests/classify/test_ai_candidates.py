"""AI-looking names outside the catalogue: hits on AI-ish names, quiet on ordinary ones."""

from __future__ import annotations

import pytest
from _classify_helpers import capture_names
from hypothesis import given
from hypothesis import strategies as st

from detector.classify.candidates import candidate_reason, looks_like_ai


@pytest.mark.parametrize(
    "name",
    [
        "darksail.ai",  # any .ai name: tolerated false positive, never attributed
        "ai.example.com",
        "my-ai-tool.io",
        "api.ai-writer.example",
        "gpt4all.io",
        "free-chatgpt.example",
        "llmhub.dev",
        "getllm.com",
        "claudecode.dev",
        "claude-mirror.xyz",
        "api.openai-proxy.cn",
        "mycopilot.app",
        "gemini-pro.example",
        "genai.gov.example",
        "chat-assistant.example.org",
        "LLM.Example.COM.",
    ],
)
def test_ai_looking_names_are_candidates(name: str) -> None:
    assert looks_like_ai(name), name


@pytest.mark.parametrize(
    "name",
    [
        "mail.google.com",
        "chat.google.com",  # Google Chat: "chat" alone is not enough
        "chatsvcagg.teams.microsoft.com",
        "thai-food.example",
        "dubai.example.ae",
        "bonsai.example",
        "jeanclaude.fr",
        "fullmoon.example",
        "smallmedia.nl",
        "quic.aiortc.org",
        "aiv-cdn.net",
        "2.97.252.173.in-addr.arpa",
        "_homekit._tcp.local",
        "lucas-imac",
        "ai",
        "",
        ".",
    ],
)
def test_ordinary_names_are_not_candidates(name: str) -> None:
    assert not looks_like_ai(name), (name, candidate_reason(name))


def test_negative_captures_yield_only_the_dot_ai_trap() -> None:
    flagged = {n for names in capture_names("negative").values() for n in names if looks_like_ai(n)}
    assert flagged == {"darksail.ai"}


def test_other_capture_names_are_quiet() -> None:
    names = set()
    for folder in ("tricky", "encap", "ai"):
        for file_names in capture_names(folder).values():
            names |= file_names
    flagged = {n for n in names if looks_like_ai(n)}
    assert flagged == set(), flagged


def test_reason_says_why() -> None:
    assert candidate_reason("darksail.ai") == "the .ai top-level domain"
    assert candidate_reason("my-ai-tool.io") == "token 'ai' in label 'my-ai-tool'"
    assert candidate_reason("www.example.com") == ""


@given(st.text(max_size=300))
def test_random_names_never_raise(name: str) -> None:
    assert isinstance(looks_like_ai(name), bool)
