"""classify: rules/ (catalogue, encrypted-DNS resolvers, policy) -> UsageEvents.

Entry points: `load_catalogue`, `load_policy`, `check_rules` (catalogue.py); `Classifier`
(classifier.py); `Pseudonymiser`, `load_or_create_key` (pseudonym.py). Matching semantics:
matcher.py and rules/README.md.
"""

from detector.classify.catalogue import (
    Catalogue,
    RuleProblem,
    RulesError,
    Service,
    check_rules,
    load_catalogue,
    load_policy,
)
from detector.classify.classifier import Classifier
from detector.classify.matcher import Matcher
from detector.classify.policy import PolicyConfig
from detector.classify.pseudonym import KeyFileError, Pseudonymiser, load_or_create_key

__all__ = [
    "Catalogue",
    "Classifier",
    "KeyFileError",
    "Matcher",
    "PolicyConfig",
    "Pseudonymiser",
    "RuleProblem",
    "RulesError",
    "Service",
    "check_rules",
    "load_catalogue",
    "load_or_create_key",
    "load_policy",
]
