"""The sink contract every store writer follows.

Lifecycle: ``add(record)`` buffers one decoded record (cheap, never does I/O);
``flush()`` writes everything buffered and returns only once the store has
acknowledged it — raising leaves the buffer intact so the caller can retry
the same batch; ``close()`` flushes nothing and releases resources. A
caller commits its Kafka offsets only after ``flush()`` returned, which is
what makes "commit after the store acknowledged" hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any


class Sink(ABC):
    """Buffered, batch-acknowledged writer (see module docstring for the lifecycle)."""

    @abstractmethod
    def add(self, record: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def flush(self) -> int:
        """Write the buffer; returns how many records were written."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def pending(self) -> int:
        """Records buffered and not yet acknowledged."""
