"""crosslevel: cross-level optimization of deep-learning models for AIoT devices."""

__version__ = "0.1.0"
