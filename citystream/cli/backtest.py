"""``citystream backtest``: detection configurations over a time range, scored against the labels.

Why a command: "would this configuration have caught last month's main break, and
how many false alarms would it have raised?" must be one command away, with the
answer printed as a comparison table, kept in the store for the Backtests
dashboard, and drawn in a report a city engineer can open without a network.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from citystream.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backtest",
        help="run detection configurations over a range or a seeded simulator run; score against labels",
        description="Run one or more detection configurations (the detect job's code, in process) over "
        "stored window aggregates (--from/--to) or a seeded simulator run (--simulate SEED), score their "
        "alerts against the labels (event-level precision/recall/F1, time to detect, false alerts per "
        "day, NAB, BATADAL S) and print a comparison table. With --replay, each configuration runs the "
        "detect job itself: a bounded Flink replay of the range's aggregates under run id bt<batch>_c<i>, "
        "scored from its shadow database and discarded afterwards unless --keep.",
    )
    p.add_argument(
        "--config",
        action="append",
        type=Path,
        default=None,
        help="detection config TOML (repeatable; default: infra/detection.toml)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels as JSONL citystream.Label records (default: the simulator's own, or the "
        "store's labels table for --from/--to)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--simulate", type=int, metavar="SEED", help="a seeded simulator run as the data")
    src.add_argument("--from", dest="from_", metavar="TIME", help="start of the stored range (ISO 8601, UTC)")
    p.add_argument("--to", metavar="TIME", help="end of the stored range (ISO 8601, UTC; with --from)")
    p.add_argument("--hours", type=float, default=3.0, help="simulated hours (default 3)")
    p.add_argument("--sensors", type=int, default=300, help="simulated sensors (default 300)")
    p.add_argument(
        "--anomalies-per-hour", type=float, default=2.0, help="injected per department (default 2)"
    )
    p.add_argument("--report", type=Path, default=None, help="write a self-contained HTML report here")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write one PNG per series here")
    save = p.add_mutually_exclusive_group()
    save.add_argument(
        "--save",
        dest="save",
        action="store_true",
        default=None,
        help="store the runs (backtest_runs, backtest_detections); default for --from/--to",
    )
    save.add_argument("--no-save", dest="save", action="store_false", help="do not store the runs")
    rp = p.add_argument_group("replay (with --from/--to)")
    rp.add_argument(
        "--replay",
        action="store_true",
        help="run the detect job itself per config: a bounded Flink replay of the aggregates topic's "
        "records produced in --from/--to (or --offsets), scored from its shadow database",
    )
    rp.add_argument(
        "--offsets",
        type=Path,
        default=None,
        metavar="FILE",
        help="exact aggregates offsets to replay, JSON {topic: {partition: [start, end]}} (for data "
        "produced at another time than its windows, e.g. imported history)",
    )
    rp.add_argument("--keep", action="store_true", help="keep the replays' topics and shadow databases")
    rp.add_argument("--parallelism", type=int, default=None, help="Flink parallelism of the replays")
    p.set_defaults(handler=_backtest)


class ProgressBar:
    """A one-line bar on stderr, redrawn only when the percentage changes (cheap when piped)."""

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.label, self.out, self.width, self.shown = label, out or sys.stderr, width, -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct == self.shown:
            return
        self.shown = pct
        fill = self.width * done // max(total, 1)
        bar = "#" * fill + "." * (self.width - fill)
        line = f"{self.label:<16} [{bar}] {pct:3d}% {done}/{total} windows"
        if self.out.isatty():  # one line redrawn in place
            self.out.write(f"\r{line}" + ("\n" if done >= total else ""))
        elif pct % 10 == 0:  # a log: a line every 10 %
            self.out.write(line + "\n")
        self.out.flush()


def _time(text: str, option: str) -> int:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-11-01T00:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _configs(paths: list[Path] | None) -> list[tuple[str, Path | None, Any]]:
    """(name, path, config) per --config; names are file stems, made unique."""
    from citystream.detection import load_config

    out: list[tuple[str, Path | None, Any]] = []
    for path in paths or [None]:
        name = path.stem if path is not None else "default"
        taken = {n for n, _, _ in out}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        out.append((name, path, load_config(path)))
    return out


def _range(args: argparse.Namespace) -> Any:
    """The stored range asked for, checked before anything connects; None for --simulate."""
    from citystream.backtest.events import TimeRange

    if args.simulate is not None:
        if args.to is not None:
            raise UserError("--to goes with --from, not with --simulate")
        if args.replay:
            raise UserError("--replay replays stored topics: give --from/--to, not --simulate")
        return None
    if not args.replay and (args.offsets is not None or args.keep or args.parallelism is not None):
        raise UserError("--offsets, --keep and --parallelism go with --replay")
    if args.to is None:
        raise UserError("--from needs --to")
    rng = TimeRange(_time(args.from_, "--from"), _time(args.to, "--to"))
    if rng.to_ms <= rng.from_ms:
        raise UserError("--to must be after --from")
    return rng


def _dataset(args: argparse.Namespace, rng: Any, client: Any) -> Any:
    from citystream.backtest import sources

    labels = sources.read_labels(args.labels) if args.labels is not None else None
    if rng is None:
        print(
            f"simulating seed {args.simulate}: {args.hours:g} h, {args.sensors} sensors ...", file=sys.stderr
        )
        data = sources.simulated(args.simulate, args.hours, args.sensors, args.anomalies_per_hour)
        return data if labels is None else sources.Dataset(data.source, data.rows, labels, data.range)
    data = sources.from_store(client, rng, labels)
    if not data.rows:
        raise UserError(f"no 1-minute sensor windows in the store between {args.from_} and {args.to}")
    return data


def _backtest(args: argparse.Namespace) -> int:
    from citystream import settings
    from citystream.backtest import compare, runner

    rng = _range(args)
    configs = _configs(args.config)
    save = args.save if args.save is not None else rng is not None
    client = None
    if save or rng is not None:
        from citystream.store.client import connect

        client = connect(settings.load())
    batch = uuid.uuid4().hex[:16]
    try:
        data = _dataset(args, rng, client)
        print(f"{data.source}: {len(data.rows)} aggregates, {len(data.labels)} labels", file=sys.stderr)
        if args.replay:
            results = _replayed(args, data, configs, client, batch[:8])
        else:
            results = [
                runner.run_config(data, name, cfg, path, ProgressBar(name)) for name, path, cfg in configs
            ]
        print(compare.comparison_table(results), end="")
        if save and client is not None:
            from citystream.backtest import store

            store.save(client, results, batch)
            print(f"stored batch {batch}: runs " + ", ".join(r.run_id for r in results), file=sys.stderr)
    finally:
        if client is not None:
            client.close()
    _outputs(args, results, data)
    return 0


def _replayed(args: argparse.Namespace, data: Any, configs: list[Any], client: Any, batch: str) -> list[Any]:
    """One detect-job replay per config over the range's aggregates, scored from its shadow database."""
    from citystream import settings
    from citystream.backtest import replayed
    from citystream.replay import read_ranges

    cfg = settings.load()
    offsets = read_ranges(args.offsets) if args.offsets else replayed.aggregates_offsets(cfg, data.range)
    return replayed.run_configs(
        cfg, client, offsets, data.range, data.labels, configs, batch=batch, keep=args.keep,
        parallelism=args.parallelism, echo=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip


def _outputs(args: argparse.Namespace, results: list[Any], data: Any) -> None:
    from citystream.backtest import report

    if args.report is not None:
        started = time.perf_counter()
        report.write(args.report, results, data.series, title=f"Backtest: {data.source}")
        print(f"report written to {args.report} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    if args.plots is not None:
        from citystream.backtest.plots import write_pngs

        files = write_pngs(args.plots, results, data.series)
        print(f"{len(files)} PNG plots written to {args.plots}", file=sys.stderr)
