"""The local policy: a decision per service and a department per client subnet.

Built by `catalogue.load_policy` from a policy YAML file (format in rules/README.md). Lookups
are per event, not per packet: `department` is a longest-prefix match over one dict per prefix
length (see iptable.PrefixTable), `policy_for` one dict probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from detector.classify.iptable import Network, PrefixTable
from detector.model import Policy

UNKNOWN_DEPARTMENT = "unknown"
DEFAULT_POLICY = Policy.UNSANCTIONED


@dataclass(slots=True, frozen=True)
class PolicyConfig:
    """What the municipality decided, per service, and where its departments sit.

    version: the policy's own revision label as written in the file (for reports and metrics).
    default: the policy of every service the file does not name.
    services: service id (catalogue or encrypted-DNS resolver) -> decision.
    subnets: (network, department) pairs as written, for reports; `department()` uses the table.
    """

    version: str
    default: Policy = DEFAULT_POLICY
    services: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    subnets: tuple[tuple[Network, str], ...] = ()
    _table: PrefixTable[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", MappingProxyType(dict(self.services)))
        object.__setattr__(self, "_table", PrefixTable(self.subnets))

    @classmethod
    def from_departments(
        cls,
        version: str,
        departments: Mapping[str, Iterable[Network]],
        services: Mapping[str, Policy] | None = None,
        default: Policy = DEFAULT_POLICY,
    ) -> PolicyConfig:
        """Build from a department -> networks mapping (the shape of the policy file)."""
        subnets = tuple((net, name) for name, nets in departments.items() for net in nets)
        return cls(version, default, services or {}, subnets)

    def policy_for(self, service_id: str) -> Policy:
        """The decision for a service id; the default for ids the policy does not name."""
        return self.services.get(service_id, self.default)

    def department(self, addr: bytes) -> str:
        """The department of the most specific subnet holding a packed client address, or "unknown"."""
        return self._table.lookup(addr) or UNKNOWN_DEPARTMENT

    @property
    def departments(self) -> tuple[str, ...]:
        """Department names in file order, without repeats."""
        return tuple(dict.fromkeys(name for _, name in self.subnets))
