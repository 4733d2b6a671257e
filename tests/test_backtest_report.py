"""The backtest report opens in a real browser and shows what it should; ``--plots`` writes PNGs.

Why a browser: the report's promise is "open it anywhere, no network"; only a
browser rendering it can show the SVG is well-formed and drawn. Debian's
``chromium`` runs headless (``.ci/run`` installs it); without it the browser
test is skipped with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from citystream.backtest import report
from citystream.backtest.events import Detection, Label, TimeRange
from citystream.backtest.runner import RunResult, result_of

MIN = 60_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
RANGE = TimeRange(T0, T0 + 120 * MIN)
LABELS = [
    Label("L1", "water", "leak", ("w1", "w2"), T0 + 30 * MIN, T0 + 45 * MIN, "simulator"),
    Label("L2", "grid", "sag", ("g1",), T0 + 80 * MIN, T0 + 90 * MIN, "simulator"),
]


def _det(did: str, domain: str, keys: tuple[str, ...], minute: int) -> Detection:
    return Detection(did, domain, "x", keys, T0 + minute * MIN, T0 + minute * MIN)


def results() -> list[RunResult]:
    """Two configurations: one catches both labels and cries wolf on t1; one catches the leak on w1 only."""
    a = [
        _det("a1", "water", ("w1", "w2"), 32),
        _det("a2", "grid", ("g1",), 81),
        _det("a3", "traffic", ("t1",), 10),
    ]
    b = [_det("b1", "water", ("w1",), 40)]
    return [
        result_of(a, LABELS, RANGE, config="eager", source="hand-made", run_id="run-a"),
        result_of(b, LABELS, RANGE, config="calm", source="hand-made", run_id="run-b"),
    ]


def series(domain: str, key: str) -> tuple[str, list[int], list[float]] | None:
    """A sine-ish ramp per series; t1 has no data (the plot must say so, not fail)."""
    if key == "t1":
        return None
    times = [T0 + k * MIN for k in range(1, 121)]
    return "flow_lps", times, [float((k * 7) % 23) for k in range(120)]


#: series with a label or a detection: w1, w2, g1 (labels) and t1 (a false alert)
EXPECTED_SERIES = {"grid/g1", "traffic/t1", "water/w1", "water/w2"}
#: one marker per detection per key it names: a1 on w1 and w2, a2 on g1, a3 on t1, b1 on w1
EXPECTED_MARKERS = {"eager": 4, "calm": 1}
#: one shaded span per label per key: L1 on w1 and w2, L2 on g1
EXPECTED_SPANS = 3


def test_report_lists_every_series_with_a_label_or_detection_and_the_scores() -> None:
    html = report.render(results(), series)
    assert set(re.findall(r'<figure data-series="([^"]+)"', html)) == EXPECTED_SERIES
    for name, n in EXPECTED_MARKERS.items():
        assert html.count(f'class="detection" data-config="{name}"') == n
    assert html.count('class="label"') == EXPECTED_SPANS
    assert html.count('class="series"') == 3  # t1 has no aggregates
    assert "no aggregates for this series" in html
    # eager: 2 of 2 labels, 1 false alert -> precision 0.667, recall 1.000; calm: 1 of 2, none false
    assert re.search(r"<td>eager</td>(<td>[^<]*</td>){4}<td>0.667</td><td>1.000</td>", html)
    assert re.search(r"<td>calm</td>(<td>[^<]*</td>){4}<td>1.000</td><td>0.500</td>", html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    assert "<script" not in html


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium (Debian: apt-get install -y chromium; .ci/run installs it)")


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    report.write(page, results(), series)
    done = _browser(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # what the browser built from the file: one SVG per series, every marker and span
    assert dom.count('<svg class="plot"') == len(EXPECTED_SERIES)
    assert dom.count('class="detection"') == sum(EXPECTED_MARKERS.values())
    assert dom.count('class="label"') == EXPECTED_SPANS
    assert dom.count("<polyline") == 3

    shot = tmp_path / "shot.png"
    done = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1000,3000", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from matplotlib import image

    px = (image.imread(str(shot))[:, :, :3] * 255).round()

    def pixels(rgb: tuple[int, int, int], tol: int = 12) -> int:
        return int((abs(px - rgb) <= tol).all(axis=2).sum())

    # drawn, not just parsed: the first configuration's markers (#0072b2), the second's (#d55e00),
    # and the labelled windows (#f4a582 at 45 % over the plot's #fafafa background)
    assert pixels((0x00, 0x72, 0xB2)) > 50
    assert pixels((0xD5, 0x5E, 0x00)) > 10
    shade = tuple(round(0.45 * c + 0.55 * 0xFA) for c in (0xF4, 0xA5, 0x82))
    assert pixels(shade) > 1000  # type: ignore[arg-type]


def test_plots_dir_gets_one_png_per_series(tmp_path: Path) -> None:
    from matplotlib import image

    from citystream.backtest.plots import write_pngs

    files = write_pngs(tmp_path / "png", results(), series)
    assert sorted(p.name for p in files) == sorted(s.replace("/", "_") + ".png" for s in EXPECTED_SERIES)
    for path in files:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = image.imread(str(path))[:, :, :3]
        assert (img < 0.9).any(axis=2).mean() > 0.01  # something drawn on the white canvas
