"""``evaluate --export``: our detections in the benchmarks' own file formats, and scoring them back.

Why: a quality number is only worth publishing when someone else can check it. NAB's
results layout (``<detector>/<category>/<detector>_<file>.csv`` with
``timestamp,value,anomaly_score,label``) is what NAB's scorer and other tools read,
and BATADAL's organisers scored hourly ``DATETIME,flag`` files.

``anomaly_score`` is the row's strongest verdict score in [0, 1], shaped so that
``anomaly_score >= ALARM_SCORE`` (0.997) holds exactly on the rows where the detector,
at its configured threshold, raised an alarm; ``label`` is 1 on those rows. (NAB's own
results files use ``label`` for the ground-truth window flag; NAB's scorer reads only
``timestamp`` and ``anomaly_score`` and its own label file, so NAB's code run with the
threshold 0.997 scores the same detections.) Reading the files back
(``score_nab_export``) uses only the exported files and NAB's label file, as NAB does.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from citystream.errors import UserError
from citystream.evaluation.benchmarks import ALARM_SCORE, AlarmsHook, RecordingAlarms
from citystream.evaluation.datasets import Dataset
from citystream.evaluation.scoring import PROFILES, NabFileScore, nab_file_score

#: The detector's name in NAB's results layout.
DETECTOR = "citystream"
NAB_HEADER = ("timestamp", "value", "anomaly_score", "label")


def _stamp(t_ms: int, fmt: str) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime(fmt)


def nab_result_path(out: Path, name: str, detector: str = DETECTOR) -> Path:
    """``realKnownCause/nyc_taxi.csv`` -> ``OUT/<detector>/realKnownCause/<detector>_nyc_taxi.csv``."""
    category, _, file = name.rpartition("/")
    return out / detector / category / f"{detector}_{file}"


def export_nab(out: Path, ds: Dataset, alarms: list[RecordingAlarms], detector: str = DETECTOR) -> list[Path]:
    """One NAB results file per series; returns the paths written."""
    paths = []
    for rec, al in zip(ds.recordings, alarms, strict=True):
        path = nab_result_path(out, rec.name, detector)
        path.parent.mkdir(parents=True, exist_ok=True)
        label = np.zeros(len(rec), dtype=int)
        label[al.detections] = 1
        scores = np.clip(al.scores, 0.0, 1.0)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(NAB_HEADER)
            for t, v, s, lab in zip(
                rec.t_ms.tolist(),
                rec.channels["value"].tolist(),
                scores.tolist(),
                label.tolist(),
                strict=True,
            ):
                w.writerow((_stamp(t, "%Y-%m-%d %H:%M:%S"), repr(v), repr(s), lab))
        paths.append(path)
    return paths


def export_batadal(
    out: Path, ds: Dataset, alarms: list[RecordingAlarms], detector: str = DETECTOR
) -> list[Path]:
    """Hourly ``DATETIME,flag`` (BATADAL's ``DD/MM/YY HH``): 1 while an alarm condition is active."""
    paths = []
    for rec, al in zip(ds.recordings, alarms, strict=True):
        path = out / "batadal" / f"{detector}_{rec.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(("DATETIME", "flag"))
            for t, flag in zip(rec.t_ms.tolist(), al.active, strict=True):
                w.writerow((_stamp(t, "%d/%m/%y %H"), int(flag)))
        paths.append(path)
    return paths


def exporter(out: Path) -> AlarmsHook:
    """The ``on_shipped`` hook of ``run_evaluation`` that writes each dataset's files under ``out``."""

    def hook(ds: Dataset, alarms: list[RecordingAlarms]) -> None:
        try:
            if ds.name == "NAB":
                export_nab(out, ds, alarms)
            elif ds.name == "BATADAL":
                export_batadal(out, ds, alarms)
        except OSError as exc:
            raise UserError(f"cannot write the export under {out}: {exc.strerror}") from None

    return hook


# --------------------------------------------------------------------------- reading it back


def _ms(stamp: str) -> int:
    return int(np.datetime64(stamp.strip()[:19], "ms").astype(np.int64))


def score_nab_export(
    out: Path, windows_file: Path, threshold: float = ALARM_SCORE, detector: str = DETECTOR
) -> dict[str, list[NabFileScore]]:
    """Per profile, the NAB file scores of the exported files, detections as NAB makes them.

    Reads nothing but the exported files and NAB's ``combined_windows.json``: a row is
    a detection when its ``anomaly_score`` reaches ``threshold``, and the windows are
    matched to rows by timestamp, as NAB does.
    """
    windows = json.loads(windows_file.read_text())
    base = out / detector
    scores: dict[str, list[NabFileScore]] = {p: [] for p in PROFILES}
    for path in sorted(base.glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name.removeprefix(detector + '_')}"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        t = np.array([_ms(r["timestamp"]) for r in rows], dtype=np.int64)
        detections = [i for i, r in enumerate(rows) if float(r["anomaly_score"]) >= threshold]
        rng = []
        for a, b in windows.get(name, []):
            lo = int(np.searchsorted(t, _ms(a), side="left"))
            hi = int(np.searchsorted(t, _ms(b), side="right")) - 1
            if lo <= hi:
                rng.append((lo, hi))
        for profile, files in scores.items():
            files.append(nab_file_score(len(rows), detections, rng, profile))
    return scores
