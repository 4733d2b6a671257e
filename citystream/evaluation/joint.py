"""The joint model of a place's channels alone, on BATADAL and SKAB.

Why a separate driver: before the joint model is wired into the detect job's
place stage, its own worth must be measured - does a model of how a place's
channels move together catch attacks and faults, on its own, with the same
alarm gate and the same scorers as ``benchmarks``? Each recording is one
place: every channel of a reading goes into one ``JointModel.step``. BATADAL
is warmed on its unlabelled normal year (training 1) and scored on training
2's hourly "under attack" flags (S); SKAB's folders (experiments run back to
back on one rig) warm on their own first readings and are scored by event F1.

Run: ``python -m citystream.evaluation.joint --datasets ../shared/datasets``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from citystream.detection.calibrate import ALARM_OFF, ALARM_ON, HOLD_WINDOWS, REFRACTORY_WINDOWS, AlarmGate
from citystream.detection.joint import JointModel, Residual
from citystream.evaluation.alarms import cadence_ms
from citystream.evaluation.datasets import Recording, load_batadal, load_skab
from citystream.evaluation.scoring import BatadalScore, EventScore, batadal_score, event_score


@dataclass
class JointRun:
    """One recording through the joint model: alarm rows, active flags, scores, evidence per alarm."""

    fired: list[int] = field(default_factory=list)
    active: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    evidence: dict[int, list[Residual]] = field(default_factory=dict)


def _rows(rec: Recording) -> tuple[list[str], list[dict[str, float]]]:
    names = list(rec.channels)
    cols = [rec.channels[c].tolist() for c in names]
    return names, [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]


def run_recording(rec: Recording, model: JointModel | None = None) -> JointRun:
    """Warm the model on the recording's history (if any), then drive and gate its readings."""
    names, rows = _rows(rec)
    jm = model or JointModel(tuple(names))
    state = jm.init()
    if rec.history is not None:
        _, hist_rows = _rows(rec.history)
        for t, row in zip(rec.history.t_ms.tolist(), hist_rows, strict=True):
            state, _, _ = jm.step(state, int(t), row)
    window = cadence_ms(rec)
    gate = AlarmGate(ALARM_ON, ALARM_OFF, HOLD_WINDOWS * window, REFRACTORY_WINDOWS * window)
    gst = gate.init()
    out = JointRun()
    for i, (t, row) in enumerate(zip(rec.t_ms.tolist(), rows, strict=True)):
        state, score, ev = jm.step(state, int(t), row)
        gst, alarm, _ = gate.step(gst, int(t), score)
        if alarm >= 1.0:
            out.fired.append(i)
            out.evidence[i] = ev
        out.active.append(AlarmGate.active(gst))
        out.scores.append(score)
    return out


def batadal_run(rec: Recording, model: JointModel | None = None) -> tuple[JointRun, BatadalScore]:
    """BATADAL training 2 with the joint model alone: its run and its S."""
    run = run_recording(rec, model)
    return run, batadal_score(run.active, rec.events)


def event_f1(recs: Sequence[Recording], runs: Sequence[JointRun]) -> EventScore:
    """Event precision/recall/F1 over recordings, as ``benchmarks.score_dataset`` counts them."""
    total = EventScore()
    for rec, run in zip(recs, runs, strict=True):
        t = rec.t_ms
        events = [(int(t[a]), int(t[b])) for a, b in rec.events]
        refs = [int(t[r]) for r in rec.refs] if rec.refs else None
        total += event_score([int(t[i]) for i in run.fired], events, refs)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--slice", choices=("small", "full"), default="full")
    parser.add_argument("--only", choices=("batadal", "skab"), default=None)
    args = parser.parse_args(argv)
    if args.only in (None, "batadal"):
        started = time.perf_counter()
        rec = load_batadal(args.datasets, args.slice).recordings[0]
        run, s = batadal_run(rec)
        share = float(np.mean(run.active))
        attack_rows = sum(b - a + 1 for a, b in rec.events)
        ratio = share * len(rec) / attack_rows
        print(
            f"BATADAL joint: S {s.s:.3f} (TTD {s.s_ttd:.3f}, CM {s.s_cm:.3f}, TPR {s.tpr:.3f}, "
            f"TNR {s.tnr:.3f}), {len(run.fired)} alarms, active {share:.1%} of hours ({ratio:.2f}x the "
            f"attack hours), {time.perf_counter() - started:.1f} s"
        )
    if args.only in (None, "skab"):
        started = time.perf_counter()
        ds = load_skab(args.datasets, args.slice)
        runs = [run_recording(rec) for rec in ds.recordings]
        ev = event_f1(ds.recordings, runs)
        print(
            f"SKAB joint: event F1 {ev.f1:.3f} (precision {ev.precision:.3f}, recall {ev.recall:.3f}, "
            f"tp {ev.tp} fn {ev.fn} fp {ev.fp}), {time.perf_counter() - started:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
