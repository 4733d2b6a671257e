"""The per-place checks over a recording: status/flow pairs and the joint model, as extra keys.

Why separate from ``benchmarks``: stage 1 keys are one channel each and are what
the detect job runs today; these checks look at several channels of one place at
once (issue 13, items 2 and 5) and are not yet wired into the job's place stage
(``citystream.detection.place``). They are scored as additional keys of the
recording - unioned with its channels' alarms - in a report row of their own, so
the table never credits the job with an offline-only check.
"""

from __future__ import annotations

import numpy as np

from citystream.detection.calibrate import ALARM_OFF, ALARM_ON, HOLD_WINDOWS, REFRACTORY_WINDOWS, AlarmGate
from citystream.detection.status import OnWithoutFlow
from citystream.evaluation.alarms import ALARM_SCORE, QUIET_SCORE_CAP, RecordingAlarms, cadence_ms
from citystream.evaluation.datasets import Recording
from citystream.evaluation.joint import run_recording

#: Key names of the per-place checks (never a channel name: channels are the dataset's columns).
PAIR, JOINT = "@pair:", "@joint"


def place_keys(rec: Recording) -> list[str]:
    """The extra keys of a recording: one per (status, flow) pair, one joint model per multi-channel place."""
    keys = [f"{PAIR}{status}|{flow}" for status, flow in rec.status_flow]
    return keys + ([JOINT] if len(rec.channels) > 1 else [])


def place_run(rec: Recording, key: str) -> RecordingAlarms:
    """One extra key's alarms, in the shape of a channel's."""
    if key == JOINT:
        run = run_recording(rec)
        return _gated(run.fired, run.active, np.asarray(run.scores, dtype=float))
    status, flow = key.removeprefix(PAIR).split("|")
    return pair_run(rec, status, flow)


def pair_run(rec: Recording, status: str, flow: str) -> RecordingAlarms:
    """A (status, flow) pair: ``OnWithoutFlow`` warmed on the history, behind the job's alarm gate."""
    window = cadence_ms(rec)
    check = OnWithoutFlow(status, flow)
    gate = AlarmGate(ALARM_ON, ALARM_OFF, HOLD_WINDOWS * window, REFRACTORY_WINDOWS * window)
    state, gstate = check.init(), gate.init()
    hist = rec.history
    if hist is not None and status in hist.channels and flow in hist.channels:
        s_past, f_past = hist.channels[status].tolist(), hist.channels[flow].tolist()
        for t, s, f in zip(hist.t_ms.tolist(), s_past, f_past, strict=True):
            state, _, _ = check.step(state, int(t), s, f)
    fired, active, scores = [], [], np.zeros(len(rec))
    rows = zip(rec.t_ms.tolist(), rec.channels[status].tolist(), rec.channels[flow].tolist(), strict=True)
    for i, (t, s, f) in enumerate(rows):
        state, score, _ = check.step(state, int(t), s, f)
        gstate, alarm, _ = gate.step(gstate, int(t), score)
        if alarm >= 1.0:
            fired.append(i)
        active.append(AlarmGate.active(gstate))
        scores[i] = score
    return _gated(fired, active, scores)


def _gated(fired: list[int], active: list[bool], scores: np.ndarray) -> RecordingAlarms:
    """Gate output as stage 1 reports it: detections are the scores at the alarm level."""
    detections = [i for i, s in enumerate(scores.tolist()) if s >= ALARM_ON]
    shown = np.where(scores >= ALARM_ON, np.maximum(scores, ALARM_SCORE), np.minimum(scores, QUIET_SCORE_CAP))
    return RecordingAlarms(fired, active, detections, shown)
