"""``evaluate --export``: NAB results files and BATADAL flag files that score as evaluate scores.

Why: the published numbers must be checkable by someone else's scorer. The files are
written by the real command over a dataset folder in the shared layout, read back with
nothing but the files and the benchmark's own label file, and scored again: the result
must equal what ``evaluate`` computed in-process, and on a tiny made-up series a value
worked out by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citystream.cli import evaluate as evaluate_cli
from citystream.detection import load_config
from citystream.errors import UserError
from citystream.evaluation import benchmarks
from citystream.evaluation.benchmarks import ALARM_SCORE
from citystream.evaluation.datasets import Dataset, default_root, load_nab
from citystream.evaluation.export import export_nab, score_nab_export
from citystream.evaluation.scoring import batadal_score, nab_normalised
from citystream.settings import ROOT

T0 = datetime(2016, 1, 4, tzinfo=UTC)
ROWS = 900


def _stamps(n: int, step: timedelta) -> list[str]:
    return [(T0 + i * step).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]


def _write_datasets(root: Path) -> None:
    """NAB in two categories (one not among NAB's names: folders are discovered) and BATADAL."""
    rnd = random.Random(1)
    nab = root / "nab"
    stamps = _stamps(ROWS, timedelta(minutes=5))
    spiky = [10 + rnd.gauss(0, 1) + (40 if 600 <= i < 610 else 0) for i in range(ROWS)]
    quiet = [5 + 0.001 * (i % 7) for i in range(ROWS)]
    for category, name, values in (("realKnownCause", "spiky", spiky), ("cityCategory", "quiet", quiet)):
        (nab / "data" / category).mkdir(parents=True)
        (nab / "data" / category / f"{name}.csv").write_text(
            "timestamp,value\n" + "".join(f"{s},{v:.3f}\n" for s, v in zip(stamps, values, strict=True))
        )
    (nab / "labels").mkdir()
    windows = {
        "realKnownCause/spiky.csv": [[stamps[560] + ".000000", stamps[650] + ".000000"]],
        "cityCategory/quiet.csv": [],
    }
    (nab / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    (nab / "labels" / "combined_labels.json").write_text(
        json.dumps({"realKnownCause/spiky.csv": [stamps[600]]})
    )

    bat = root / "batadal"
    bat.mkdir()

    def table(n: int, start: datetime, attack: range | None) -> str:
        out = ["DATETIME, L_T1, P_J1,ATT_FLAG\n"]
        for i in range(n):
            level = 1.0 if attack is not None and i in attack else 3 + rnd.gauss(0, 0.05)
            flag = int(attack is not None and i in attack)
            stamp = (start + timedelta(hours=i)).strftime("%d/%m/%y %H")
            out.append(f"{stamp},{level:.3f},{30 + rnd.gauss(0, 1):.2f},{flag}\n")
        return "".join(out)

    (bat / "training_1_normal.csv").write_text(table(300, T0, None))
    start2 = T0 + timedelta(days=30)
    (bat / "training_2_labeled.csv").write_text(table(200, start2, range(120, 140)))
    a, b = start2 + timedelta(hours=120), start2 + timedelta(hours=139)
    (bat / "attacks_training.csv").write_text(
        "split,attack_no,start,end_inclusive,hours\n"
        f"training_dataset_2,1,{a:%Y-%m-%dT%H:%M:%S},{b:%Y-%m-%dT%H:%M:%S},20\n"
    )


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    evaluate_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def _shipped_alarms(root: Path, key: str, slice_: str = "full") -> tuple[Dataset, list]:
    """In-process: the shipped configuration's alarms per recording, as ``evaluate`` scores them."""
    got: dict[str, tuple[Dataset, list]] = {}
    shipped = [v for v in benchmarks.VARIANTS if v.shipped]
    benchmarks.run_evaluation(
        root,
        load_config(),
        slice_,
        (key,),
        shipped,
        on_shipped=lambda ds, al: got.setdefault(ds.name, (ds, al)),
    )
    return next(iter(got.values()))


def test_export_of_a_made_up_dataset_scores_the_hand_worked_value(tmp_path: Path) -> None:
    root, out = tmp_path / "datasets", tmp_path / "out"
    _write_datasets(root)
    argv = ["evaluate", "--datasets", str(root), "--only", "nab", "--only", "batadal"]
    assert _run_cli([*argv, "--export", str(out), "--out", str(tmp_path / "q.md")]) == 0

    spiky = out / "citystream" / "realKnownCause" / "citystream_spiky.csv"
    quiet = out / "citystream" / "cityCategory" / "citystream_quiet.csv"
    with spiky.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["timestamp", "value", "anomaly_score", "label"] and len(rows) == ROWS + 1
    assert rows[1][0] == "2016-01-04 00:00:00" and float(rows[601][1]) == pytest.approx(10 + 40, abs=5)
    assert all(0.0 <= float(r[2]) <= 1.0 and r[3] in ("0", "1") for r in rows[1:])
    assert [i for i, r in enumerate(rows[1:]) if r[3] == "1"] == [600]  # the spike's first row only
    # NAB's threshold rule on the score finds exactly the labelled alarms, though the calibrated
    # evidence stays high for the rest of the spike (kept below the alarm level there)
    assert [i for i, r in enumerate(rows[1:]) if float(r[2]) >= ALARM_SCORE] == [600]
    assert max(float(r[2]) for r in rows[602:611]) > 0.99
    assert all(r[3] == "0" for r in list(csv.reader(quiet.open()))[1:])

    scores = score_nab_export(out, root / "nab" / "labels" / "combined_windows.json")
    # window rows 560..650 (w = 91), one detection at 600: y = -(650 - 600 + 1) / 91 = -0.5604
    # -> tp * tanh(2.5 * 51 / 91) / tanh(2.5) = 0.897604; the quiet file adds nothing;
    # null = -1 (one window), perfect = 1 -> standard 100 * (0.897604 + 1) / 2 = 94.880
    assert sum(f.raw for f in scores["standard"]) == pytest.approx(0.897604, abs=1e-6)
    assert nab_normalised(scores["standard"]) == pytest.approx(94.880, abs=1e-3)
    # no false positive, so the three profiles agree here
    assert nab_normalised(scores["reward_low_FP_rate"]) == pytest.approx(94.880, abs=1e-3)
    assert nab_normalised(scores["reward_low_FN_rate"]) == pytest.approx(100 * (0.897604 + 2) / 3, abs=1e-3)
    assert "| 94.9 | 94.9 | 96.6 |" in (tmp_path / "q.md").read_text()  # the report's numbers are these

    flags_file = out / "batadal" / "citystream_training_2_labeled.csv"
    with flags_file.open(newline="") as fh:
        flags = list(csv.reader(fh))
    assert flags[0] == ["DATETIME", "flag"] and len(flags) == 201
    start2 = T0 + timedelta(days=30)
    assert (
        flags[1][0] == f"{start2:%d/%m/%y %H}"
        and flags[-1][0] == f"{start2 + timedelta(hours=199):%d/%m/%y %H}"
    )
    ds, alarms = _shipped_alarms(root, "batadal")
    from_file = batadal_score([f == "1" for _, f in flags[1:]], ds.recordings[0].events)
    assert from_file.s == pytest.approx(batadal_score(alarms[0].active, ds.recordings[0].events).s)
    assert from_file.s_ttd > 0.5  # the spoofed level is caught early in the attack


def test_nab_categories_are_discovered_and_unlabelled_files_refused(tmp_path: Path) -> None:
    _write_datasets(tmp_path)
    assert [r.name for r in load_nab(tmp_path).recordings] == [
        "cityCategory/quiet.csv",
        "realKnownCause/spiky.csv",
    ]
    extra = tmp_path / "nab" / "data" / "newCategory"
    extra.mkdir()
    (extra / "x.csv").write_text("timestamp,value\n2016-01-04 00:00:00,1\n")
    with pytest.raises(UserError, match=r"newCategory/x\.csv"):
        load_nab(tmp_path)


@pytest.mark.datasets
def test_real_nab_export_scores_as_in_process(tmp_path: Path) -> None:
    root = default_root(ROOT)
    if not (root / "nab").is_dir():
        pytest.skip(f"shared datasets not found at {root}")
    ds, alarms = _shipped_alarms(root, "nab", "small")
    export_nab(tmp_path, ds, alarms)
    for path in tmp_path.glob("citystream/*/*.csv"):
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert all((float(r["anomaly_score"]) >= ALARM_SCORE) == (r["label"] == "1") for r in rows), path
    exported = score_nab_export(tmp_path, root / "nab" / "labels" / "combined_windows.json")
    in_process = benchmarks.nab_file_scores(ds, alarms)
    for profile, files in in_process.items():
        assert len(exported[profile]) == len(files) == len(ds.recordings)
        assert nab_normalised(exported[profile]) == pytest.approx(nab_normalised(files), abs=1e-9)
        assert not math.isnan(nab_normalised(files))
    assert any(f.fp for f in in_process["standard"])  # the check covers false positives too
