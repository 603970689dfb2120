"""Department lookup by most specific subnet, and the policy decision per service."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.classify.iptable import PrefixTable, parse_network
from detector.classify.policy import UNKNOWN_DEPARTMENT, PolicyConfig
from detector.model import Policy


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture()
def departments() -> PolicyConfig:
    return PolicyConfig.from_departments(
        "test",
        {
            "Gemeentehuis": [_net("10.0.0.0/8"), _net("2001:db8::/32")],
            "Sociaal Domein": [_net("10.20.0.0/16"), _net("2001:db8:20::/48")],
            "Jeugd": [_net("10.20.8.0/21"), _net("2001:db8:20:8::/64")],
            "Printer": [_net("10.20.8.7/32")],
        },
        {"deepseek": Policy.BLOCKED, "deepl": Policy.TOLERATED},
    )


@pytest.mark.parametrize(
    ("addr", "department"),
    [
        ("10.1.2.3", "Gemeentehuis"),
        ("10.20.1.1", "Sociaal Domein"),
        ("10.20.8.1", "Jeugd"),
        ("10.20.15.255", "Jeugd"),
        ("10.20.16.0", "Sociaal Domein"),
        ("10.20.8.7", "Printer"),  # a host route beats its subnet
        ("::ffff:10.20.8.9", "Jeugd"),  # IPv4-mapped IPv6 counts as IPv4
        ("2001:db8:1::1", "Gemeentehuis"),
        ("2001:db8:20:1::1", "Sociaal Domein"),
        ("2001:db8:20:8::42", "Jeugd"),
        ("192.168.1.1", UNKNOWN_DEPARTMENT),
        ("2001:db9::1", UNKNOWN_DEPARTMENT),
        ("11.0.0.0", UNKNOWN_DEPARTMENT),
    ],
)
def test_department_is_the_most_specific_subnet(
    departments: PolicyConfig, addr: str, department: str
) -> None:
    assert departments.department(_addr(addr)) == department


def test_address_of_odd_length_has_unknown_department(departments: PolicyConfig) -> None:
    assert departments.department(b"") == UNKNOWN_DEPARTMENT
    assert departments.department(b"\x0a\x00\x00") == UNKNOWN_DEPARTMENT


def test_policy_for_unnamed_service_is_the_default(departments: PolicyConfig) -> None:
    assert departments.policy_for("deepseek") is Policy.BLOCKED
    assert departments.policy_for("deepl") is Policy.TOLERATED
    assert departments.policy_for("openai_chatgpt") is Policy.UNSANCTIONED
    strict = PolicyConfig("v", Policy.BLOCKED)
    assert strict.policy_for("anything") is Policy.BLOCKED


def test_policy_config_is_immutable(departments: PolicyConfig) -> None:
    with pytest.raises(TypeError):
        departments.services["x"] = Policy.SANCTIONED  # type: ignore[index]
    assert departments.departments == ("Gemeentehuis", "Sociaal Domein", "Jeugd", "Printer")


def test_empty_policy_knows_no_department() -> None:
    assert PolicyConfig("v").department(_addr("10.0.0.1")) == UNKNOWN_DEPARTMENT


def test_parse_network_refuses_host_bits_and_non_strings() -> None:
    assert parse_network("10.20.8.0/21") == _net("10.20.8.0/21")
    assert parse_network("192.0.2.1") == _net("192.0.2.1/32")
    assert parse_network("10.20.9.1/21") == "bad CIDR '10.20.9.1/21': 10.20.9.1/21 has host bits set"
    assert parse_network(21) == "must be a CIDR string, not int"


_v4_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_v4_nets, max_size=20, unique=True), st.integers(0, 2**32 - 1))
def test_prefix_table_agrees_with_a_linear_scan(nets: list[ipaddress.IPv4Network], addr: int) -> None:
    table = PrefixTable((net, str(net)) for net in nets)
    ip = ipaddress.IPv4Address(addr)
    containing = [n for n in nets if ip in n]
    expected = str(max(containing, key=lambda n: n.prefixlen)) if containing else None
    assert table.lookup(ip.packed) == expected
