"""The coordinator of `--workers N` adds up its workers' counter snapshots."""

from __future__ import annotations

from detector.config import Config
from detector.fanout import Coordinator


def test_table_sizes_add_up_every_workers_flows_and_dns_answers() -> None:
    # Each worker holds its own clients' flows and DNS answers (fanout keyed on the client),
    # so both tables are summed, not the largest one taken.
    coordinator = Coordinator(Config(), interfaces=("eth1",), reload_config=None)
    coordinator._snapshots = {0: {"_tables": (120, 40)}, 1: {"_tables": (80, 25)}, 2: {}}
    assert coordinator.table_sizes() == (200, 65)
