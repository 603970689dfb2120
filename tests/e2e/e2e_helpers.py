"""Run captures through the real pipeline in-process (no database) for end-to-end tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from detector.app import build_classifier
from detector.capture.pcapfile import iter_frames
from detector.config import Config, load
from detector.model import Stats, UsageEvent
from detector.pipeline import Pipeline


def make_config(tmp_path: Path, **flows: object) -> Config:
    """Defaults with the key and database inside tmp_path."""
    cfg = load(None, {"privacy.key_file": str(tmp_path / "key"), "store.path": "", "sensor.name": "test"})
    if flows:
        cfg = dataclasses.replace(cfg, flows=dataclasses.replace(cfg.flows, **flows))
    return cfg


def run_capture(path: Path, cfg: Config, include_all: bool = True) -> tuple[list[UsageEvent], Stats]:
    """All events of one capture file, and the counters."""
    events: list[UsageEvent] = []
    stats = Stats()
    pipe = Pipeline(cfg, build_classifier(cfg), events.append, stats, include_unmatched=include_all)
    pipe.run(iter_frames(path, on_warning=lambda msg: None))
    pipe.finish()
    return events, stats
