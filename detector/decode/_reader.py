"""The error the length-prefixed decoders raise inside, shared by them.

A read past the end of a vector raises `DecodeError` carrying the `Anomaly` that names the
broken field, so a nested vector (an extension body, a name list) reports its own stable
name. Public decoders catch `DecodeError` at their edge and return the anomaly; it never
escapes a public function.
"""

from __future__ import annotations

from detector.model import Anomaly


class DecodeError(Exception):
    """A read ran past the end of its vector; `anomaly` names the broken field."""

    __slots__ = ("anomaly",)

    def __init__(self, anomaly: Anomaly) -> None:
        super().__init__(anomaly.kind)
        self.anomaly = anomaly
