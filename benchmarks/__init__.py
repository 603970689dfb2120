"""Benchmark harnesses: `python -m benchmarks.offline` and `python -m benchmarks.live` (see README.md)."""
