"""The one list of decode anomaly names, gathered from the decoder modules.

Each decoder module owns its names (a module-level `ANOMALIES` dict: name → reason);
this module only collects them, so `shadowai_decode_anomalies_total{kind}` and the docs
have a single complete list.
"""

from __future__ import annotations

from detector.decode import dns, gquic, http, link, net, quic, tls, tunnels



def all_anomalies() -> dict[str, str]:
    """Every anomaly name the sensor can count, with its one-line reason."""
    out: dict[str, str] = {}
    for module in (link, tunnels, net, dns, tls, http, quic, gquic):
        out.update(getattr(module, "ANOMALIES", {}))
    return dict(sorted(out.items()))
