"""Loaders, the evaluate command, and (marked ``datasets``) the real numbers on the small slice."""

from __future__ import annotations

import argparse
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citystream.cli import evaluate as detect_cli
from citystream.detection import load_config
from citystream.errors import UserError
from citystream.evaluation import evaluate
from citystream.evaluation.datasets import default_root, load_batadal, load_nab, load_skab
from citystream.settings import ROOT

DATASETS = default_root(ROOT)
T0 = datetime(2016, 1, 4, tzinfo=UTC)


def _write_fake_datasets(root: Path, rows: int = 900) -> None:
    """Tiny NAB, BATADAL and SKAB look-alikes with one obvious anomaly each."""
    rnd = random.Random(1)
    nab = root / "nab"
    (nab / "data" / "realKnownCause").mkdir(parents=True)
    (nab / "labels").mkdir()
    stamps = [(T0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(rows)]
    vals = [10 + rnd.gauss(0, 1) + (40 if 600 <= i < 610 else 0) for i in range(rows)]
    (nab / "data" / "realKnownCause" / "fake.csv").write_text(
        "timestamp,value\n" + "".join(f"{s},{v:.3f}\n" for s, v in zip(stamps, vals, strict=True))
    )
    (nab / "labels" / "combined_windows.json").write_text(
        json.dumps({"realKnownCause/fake.csv": [[stamps[560] + ".000000", stamps[650] + ".000000"]]})
    )
    (nab / "labels" / "combined_labels.json").write_text(
        json.dumps({"realKnownCause/fake.csv": [stamps[600]]})
    )

    bat = root / "batadal"
    bat.mkdir()
    header = "DATETIME, L_T1, F_PU1, P_J1,ATT_FLAG\n"

    def table(n: int, start: datetime, attack: range | None) -> str:
        out, level = [header], 3.0
        for i in range(n):
            flow = 50.0 if (i // 6) % 2 else 0.0
            level += 0.01 * flow - 0.25 + rnd.gauss(0, 0.01)
            shown = 1.0 if attack is not None and i in attack else level  # spoofed level reading
            stamp = (start + timedelta(hours=i)).strftime("%d/%m/%y %H")
            flag = int(attack is not None and i in attack)
            out.append(f"{stamp},{shown:.3f},{flow:.2f},{30 + rnd.gauss(0, 1):.2f},{flag}\n")
        return "".join(out)

    (bat / "training_1_normal.csv").write_text(table(600, T0, None))
    start2 = T0 + timedelta(days=60)
    (bat / "training_2_labeled.csv").write_text(table(400, start2, range(300, 330)))
    a, b = start2 + timedelta(hours=300), start2 + timedelta(hours=329)
    (bat / "attacks_training.csv").write_text(
        "split,attack_no,start,end_inclusive,hours\n"
        f"training_dataset_2,1,{a:%Y-%m-%dT%H:%M:%S},{b:%Y-%m-%dT%H:%M:%S},30\n"
    )

    skab = root / "skab" / "data" / "valve1"
    skab.mkdir(parents=True)
    lines = ["datetime;Current;Pressure;anomaly;changepoint\n"]
    for i in range(rows):
        bad = 650 <= i < 700
        stamp = (T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        current = 1 + rnd.gauss(0, 0.05) + (1 if bad else 0)
        lines.append(f"{stamp};{current:.4f};{rnd.gauss(0, 1):.4f};{float(bad)};0.0\n")
    (skab / "0.csv").write_text("".join(lines))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    _write_fake_datasets(root)
    return root


def test_loaders_read_the_fake_datasets(fake_root: Path) -> None:
    nab = load_nab(fake_root).recordings[0]
    assert nab.events == [(560, 650)] and nab.refs == [600] and len(nab) == 900
    bat = load_batadal(fake_root).recordings[0]
    assert bat.events == [(300, 329)] and bat.history is not None and "ATT_FLAG" not in bat.channels
    assert bat.t_ms[1] - bat.t_ms[0] == 3_600_000
    skab = load_skab(fake_root).recordings[0]
    assert (
        skab.name == "valve1"
        and skab.events == [(650, 699)]
        and set(skab.channels) == {"Current", "Pressure"}
    )


def test_loaders_explain_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="NAB not found"):
        load_nab(tmp_path)
    (tmp_path / "skab" / "data" / "valve1").mkdir(parents=True)
    with pytest.raises(UserError, match="no SKAB files"):
        load_skab(tmp_path)


def test_evaluate_command_writes_the_report(
    fake_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    detect_cli.register(parser.add_subparsers())
    out = tmp_path / "reports" / "quality.md"
    # The simulator is scored by tests/test_detect_simulator.py; here only the datasets' report.
    only = ["--only", "nab", "--only", "batadal", "--only", "skab"]
    args = parser.parse_args(
        ["evaluate", "--datasets", str(fake_root), "--slice", "full", "--out", str(out), *only]
    )
    assert args.handler(args) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    for heading in ("### NAB", "### BATADAL", "### SKAB", "| null |", "| stage 1, level_model=ewma |"):
        assert heading in text
    shipped = evaluate.VARIANTS[-1]
    results = evaluate.run_evaluation(fake_root, load_config(), "full", ("batadal",), variants=[shipped])
    assert results["BATADAL"][0].batadal > 0.5  # the spoofed level is caught


def test_evaluate_command_rejects_a_missing_folder(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    detect_cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--datasets", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="not found"):
        args.handler(args)


@pytest.mark.datasets
def test_small_slice_real_numbers_are_sane() -> None:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    results = evaluate.run_evaluation(DATASETS, load_config(), "small")
    nab = {r.detector: r for r in results["NAB"]}
    bat = {r.detector: r for r in results["BATADAL"]}
    skab = {r.detector: r for r in results["SKAB"]}
    chosen, ewma = evaluate.VARIANTS[-1].name, "stage 1, level_model=ewma"
    assert nab["null"].nab == 0.0
    assert nab[chosen].nab > nab[ewma].nab + 10  # why imported series get the calibrated level model
    assert bat["null"].batadal == pytest.approx(0.25)
    assert bat[chosen].batadal > bat[ewma].batadal
    assert skab[chosen].events.f1 > 0.3 and skab[chosen].events.recall > 0.5
    assert all(not math.isnan(r.events.median_ttd) for r in (nab[chosen], bat[chosen], skab[chosen]))
