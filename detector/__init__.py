"""Shadow-AI detector: a passive network sensor for generative-AI use."""

__version__ = "0.1.0"
