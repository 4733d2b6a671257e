"""Render every dashboard to ``dashboards/json/<uid>.json``, or check that the committed files match.

Why commit generated JSON: reviewers see in a diff exactly what Grafana will
store, provisioning can load the files without Python, and ``--check`` in CI
catches code changed without regenerating (or JSON edited by hand). Keys are
sorted and indentation fixed so the same code always yields the same bytes.

Run as ``citystream dashboards build [--check]`` or ``python -m dashboards.build [--check]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citystream.dashboards.boards import all_dashboards

#: Where the committed dashboards live; one file per dashboard uid.
JSON_DIR = Path(__file__).resolve().parent / "json"


def generate() -> dict[str, dict[str, Any]]:
    """Dashboard uid -> model, from the code in :mod:`dashboards.boards`."""
    models: dict[str, dict[str, Any]] = {}
    for model in all_dashboards():
        uid = model["uid"]
        if uid in models:
            raise ValueError(f"two dashboards share the uid {uid!r}")
        models[uid] = model
    return models


def render(model: dict[str, Any]) -> str:
    """The exact text committed for ``model``: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path | None = None) -> list[Path]:
    """Write every dashboard and delete ``*.json`` files no dashboard produces any more."""
    directory = JSON_DIR if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    models = generate()
    written = []
    for uid, model in sorted(models.items()):
        path = directory / f"{uid}.json"
        text = render(model)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in sorted(directory.glob("*.json")):
        if stale.stem not in models:
            stale.unlink()
    return written


def check(directory: Path | None = None) -> list[str]:
    """Problems with the committed JSON, one line each; empty when it matches the code."""
    directory = JSON_DIR if directory is None else directory
    models = generate()
    problems = []
    for uid, model in sorted(models.items()):
        path = directory / f"{uid}.json"
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif path.read_text(encoding="utf-8") != render(model):
            problems.append(f"{path.name}: differs from what the code generates")
    for extra in sorted(directory.glob("*.json")):
        if extra.stem not in models:
            problems.append(f"{extra.name}: no dashboard in the code has this uid")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``--check``: exit 1 and name the files when the committed JSON is out of date."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        problems = check()
        for line in problems:
            print(f"dashboards: {line}", file=sys.stderr)
        if problems:
            print(
                "dashboards: run `citystream dashboards build` and commit dashboards/json/", file=sys.stderr
            )
            return 1
        print(f"dashboards: {len(generate())} dashboards up to date in {JSON_DIR}")
        return 0
    if args:
        print("usage: python -m dashboards.build [--check]", file=sys.stderr)
        return 2
    paths = write()
    print(f"dashboards: wrote {len(paths)} dashboards to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
