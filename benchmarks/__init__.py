"""Benchmarks: measurements for the README's performance section, not tests."""
