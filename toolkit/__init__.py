"""Augur: turn an LLM's imagination into training data, offline."""

__version__ = "0.1.0"
