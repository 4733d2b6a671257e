#!/usr/bin/env python3
"""Check the architecture contracts (import-linter) on the package as it installs.

Contract
  Usage:   .venv/bin/python .ci/lint_imports.py   (from anywhere; .ci/run and `make lint` call it)
  Why:     the top-level folders jobs/, connectors/ and dashboards/ install as
           citystream.jobs, citystream.connectors and citystream.dashboards
           ([tool.setuptools.package-dir] in pyproject.toml). An editable install maps them
           with an import hook, which import-linter's graph builder cannot see: it walks the
           citystream/ folder only. So this script lays the installed tree out in a temporary
           folder exactly as pyproject.toml maps it (a copy of the .py files, no build, no
           network) and runs `lint-imports` with the contracts of pyproject.toml on it.
  Checks:  also that every folder holding an __init__.py is one of pyproject's packages, so a
           package cannot escape the contracts by being left out of the install.
  Exit:    0 all contracts kept; 1 a contract is broken or a package is missing from
           pyproject.toml; 2 bad setup (no lint-imports next to this python).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(pyproject: dict) -> dict[str, Path]:
    """Package name -> source folder, as setuptools resolves ``packages`` and ``package-dir``."""
    tool = pyproject["tool"]["setuptools"]
    mapping: dict[str, str] = tool.get("package-dir", {})
    out: dict[str, Path] = {}
    for name in tool["packages"]:
        # the longest mapped prefix wins, as in setuptools
        prefix = max((p for p in mapping if name == p or name.startswith(p + ".")), key=len, default="")
        rest = name[len(prefix) :].lstrip(".").replace(".", "/")
        base = Path(mapping[prefix]) if prefix else Path(name.split(".")[0])
        if prefix:
            out[name] = ROOT / base / rest if rest else ROOT / base
        else:
            out[name] = ROOT / name.replace(".", "/")
    return out


def unlisted(dirs: dict[str, Path]) -> list[Path]:
    """Folders with an __init__.py under a mapped root that no listed package covers."""
    listed = {d.resolve() for d in dirs.values()}
    roots = {d for name, d in dirs.items() if name.count(".") <= 1}
    missing = []
    for root in roots:
        for init in root.rglob("__init__.py"):
            if init.parent.resolve() not in listed and "__pycache__" not in init.parts:
                missing.append(init.parent)
    return sorted(set(missing))


def lay_out(dirs: dict[str, Path], target: Path) -> None:
    """Copy each package's own .py files to where the install would put them."""
    for name, src in dirs.items():
        dest = target / name.replace(".", "/")
        dest.mkdir(parents=True, exist_ok=True)
        for py in src.glob("*.py"):
            shutil.copy2(py, dest / py.name)


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        print(f"lint_imports: {lint} not found: run `make setup`", file=sys.stderr)
        return 2
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = package_dirs(pyproject)
    missing = unlisted(dirs)
    if missing:
        for m in missing:
            print(
                f"lint_imports: {m.relative_to(ROOT)} has an __init__.py but is not in "
                "[tool.setuptools] packages of pyproject.toml",
                file=sys.stderr,
            )
        return 1
    with tempfile.TemporaryDirectory(prefix="citystream-lint-") as tmp:
        lay_out(dirs, Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        done = subprocess.run(
            [str(lint), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
            cwd=tmp,
            env=env,
            check=False,
        )
    return 1 if done.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
