"""msctr: multi-scenario CTR research end to end."""

__version__ = "0.1.0"
