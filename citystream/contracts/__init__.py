"""Data contracts: the Avro schemas in avro/, their wire format, and how they may evolve.

Why raw Avro: Flink SQL's ``avro`` format reads and writes bare Avro binary (no
container header, no schema-registry magic byte), deriving its schema from the
table DDL. Every Python producer and consumer must therefore speak exactly that,
and ``encode``/``decode`` here write and read nothing else.

Why a compatibility checker of our own: the Apache ``avro`` package ships one
(``avro.compatibility``), and ``tests/test_contracts.py`` checks that our verdicts
agree with it, but its error locations are field *indices* that are lost inside
unions, and a failing CI check has to name the field and the rule. This module
implements the Avro specification's schema-resolution rules for the question
"can a reader holding the NEW schema read data written with the OLD one"
(BACKWARD), plus two project rules that Avro does not have (see ``check_backward``).

Schemas live one named type per file, ``avro/<namespace>.<Name>.avsc``, and may
refer to each other by full name; ``load_texts`` inlines those references so every
schema can be used on its own.
"""

from __future__ import annotations

from citystream.contracts.evolution import PROMOTIONS, Incompatibility, check_backward, resolution_issues
from citystream.contracts.flink import flink_violations
from citystream.contracts.schemas import (
    NAMED,
    PRIMITIVES,
    SCHEMA_DIR,
    JsonSchema,
    SchemaError,
    load_dir,
    load_texts,
    names,
    parse,
    parsed_schema,
    resolve_name,
    schema,
)
from citystream.contracts.wire import decode, deserializer, encode, encode_many, serializer

__all__ = [
    "NAMED",
    "PRIMITIVES",
    "PROMOTIONS",
    "SCHEMA_DIR",
    "Incompatibility",
    "JsonSchema",
    "SchemaError",
    "check_backward",
    "decode",
    "deserializer",
    "encode",
    "encode_many",
    "flink_violations",
    "load_dir",
    "load_texts",
    "names",
    "parse",
    "parsed_schema",
    "resolution_issues",
    "resolve_name",
    "schema",
    "serializer",
]
