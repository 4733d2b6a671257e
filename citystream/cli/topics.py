"""Kafka topics as declared in infra/topics.toml, and ``citystream topics create | list``.

Why declarative: the producer, the Flink jobs and the store all assume each
topic's partitioning, retention and compaction; one file decides them and
``ensure_topics`` makes a broker match it, as often as you like.

Contract of ``ensure_topics`` / ``citystream topics create``:

* creates the topics the broker lacks, with the spec's partitions and configs;
* sets every config the spec names whose value on the broker differs (configs the
  spec does not name are left alone);
* adds partitions where the spec asks for more, and says that keys then map to
  other partitions;
* refuses, before changing anything, when the spec asks for fewer partitions than
  a topic has (Kafka cannot remove partitions): a UserError names the topic;
* returns (and the command prints) what it changed; a second run changes nothing.

``citystream topics list`` compares the broker with the spec and changes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from citystream import kafkaconf, settings
from citystream.errors import UserError


def _settings_args(args: argparse.Namespace) -> tuple[str, str]:
    try:
        current = settings.load()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    bootstrap = args.bootstrap or current.kafka_bootstrap
    prefix = current.topic_prefix if args.prefix is None else args.prefix
    if args.spec is None:
        args.spec = current.topics_spec
    return bootstrap, prefix


def _cmd_create(args: argparse.Namespace) -> int:
    from citystream import topics  # kafka-python: ~0.3 s that --help must not pay

    bootstrap, prefix = _settings_args(args)
    security = kafkaconf.kafka_python(settings.load(), "admin")
    changes = topics.ensure_topics(bootstrap, prefix, args.spec, security=security)
    for change in changes:
        print(change)
    if not changes:
        print(
            f"topics: up to date ({len(topics.load_spec(args.spec))} topics under {prefix!r} at {bootstrap})"
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from citystream import topics  # kafka-python: ~0.3 s that --help must not pay

    bootstrap, prefix = _settings_args(args)
    security = kafkaconf.kafka_python(settings.load(), "admin")
    states = topics.list_topics(bootstrap, prefix, args.spec, security=security)
    print(f"{'TOPIC':34} {'PARTS':>5} {'CLEANUP':14} {'RETENTION.MS':>13} {'COMPRESSION':11}  STATUS")
    for st in states:
        parts = "-" if st.partitions is None else str(st.partitions)
        c = st.configs
        print(
            f"{st.name:34} {parts:>5} {c.get('cleanup.policy', '-'):14} {c.get('retention.ms', '-'):>13} "
            f"{c.get('compression.type', '-'):11}  {st.status}"
        )
    return 0 if all(st.status == "ok" for st in states) else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream topics create|list``."""
    parser = sub.add_parser(
        "topics",
        help="create and inspect the Kafka topics declared in infra/topics.toml",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("create", _cmd_create, "create missing topics and fix configs that differ (idempotent)"),
        ("list", _cmd_list, "show the topics next to the spec (exit 1 unless all match)"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument(
            "--bootstrap", default=None, help="Kafka HOST:PORT (default: CITYSTREAM_KAFKA_BOOTSTRAP)"
        )
        p.add_argument("--prefix", default=None, help="topic name prefix (default: CITYSTREAM_TOPIC_PREFIX)")
        p.add_argument(
            "--spec",
            type=Path,
            default=None,
            help="topic spec (default: CITYSTREAM_TOPICS_SPEC, else infra/topics.toml)",
        )
        p.set_defaults(handler=handler)
