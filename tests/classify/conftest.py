"""Fixtures for tests/classify: the repository's rules, the example policy, a classifier."""

from __future__ import annotations

import pytest
from _classify_helpers import POLICY_EXAMPLE, RULES, TEST_KEY

from detector.classify import Catalogue, Classifier, PolicyConfig, Pseudonymiser, load_catalogue, load_policy


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(RULES)


@pytest.fixture(scope="session")
def policy(catalogue: Catalogue) -> PolicyConfig:
    return load_policy(POLICY_EXAMPLE, catalogue)


@pytest.fixture(scope="session")
def classifier(catalogue: Catalogue, policy: PolicyConfig) -> Classifier:
    """Shared by all tests: a Classifier is immutable apart from its memos."""
    return Classifier(catalogue, policy, Pseudonymiser(TEST_KEY), raw_clients=False, sensor="test-sensor")
