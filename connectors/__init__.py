"""Bridges between citystream and the outside world (Kafka producers, importers' sinks)."""
