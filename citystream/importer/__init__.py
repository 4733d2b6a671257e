"""Real time series onto the reading topics, with their labels (``citystream import``).

Why: a detector is only trustworthy once it has run on real data, and it
should not need a second code path for that. The importer maps public data
sets onto the same Avro schemas, topics, keys and ``citystream.Label`` ground
truth the simulator produces, so a detector cannot tell them apart.

Modules: ``tables`` (CSV columns into numpy, pandas only here), ``formats``
(CSV, NAB, BATADAL into a :class:`Dataset`), ``dataset`` (the model, value
fields and naming rules), ``publish`` (encoding and delivery, paced or not),
``sensors`` (the registry entries an import registers first).
"""

from __future__ import annotations

from citystream.importer.dataset import FIELDS, REQUIRED_DEFAULTS, Dataset, Series
from citystream.importer.formats import read_batadal, read_csv, read_nab
from citystream.importer.publish import Encoded, encode, publish

__all__ = [
    "FIELDS",
    "REQUIRED_DEFAULTS",
    "Dataset",
    "Encoded",
    "Series",
    "encode",
    "publish",
    "read_batadal",
    "read_csv",
    "read_nab",
]
