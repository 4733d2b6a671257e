"""citystream: real-time analytics for a city's traffic, water and grid sensors."""

__version__ = "0.1.0"
