"""The shape of the code base: what installs, and that the import contracts cover every module.

Why tests on top of `lint-imports`: the contracts in pyproject.toml name modules. A new
package that nobody adds to a contract's list, or to the install's package list, would
escape them silently; these tests make both omissions fail.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lint_module():
    spec = importlib.util.spec_from_file_location("lint_imports", ROOT / ".ci" / "lint_imports.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint_imports"] = module
    spec.loader.exec_module(module)
    return module


def _top_level_modules() -> set[str]:
    """citystream.X for every module and package directly under the installed citystream."""
    lint = _lint_module()
    names = set()
    for name, folder in lint.package_dirs(PYPROJECT).items():
        parts = name.split(".")
        if len(parts) == 2:
            names.add(name)
        if name == "citystream":
            names |= {f"citystream.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    return names


def test_only_citystream_installs() -> None:
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == {"citystream"}
    assert "py-modules" not in PYPROJECT["tool"]["setuptools"]


def test_every_package_folder_is_installed() -> None:
    lint = _lint_module()
    dirs = lint.package_dirs(PYPROJECT)
    assert lint.unlisted(dirs) == []
    assert all(folder.is_dir() for folder in dirs.values()), dirs
    # the design card's folders are where the mapped packages come from
    assert dirs["citystream.jobs"] == ROOT / "jobs"
    assert dirs["citystream.connectors"] == ROOT / "connectors"
    assert dirs["citystream.dashboards"] == ROOT / "dashboards"


def test_store_server_contract_names_every_other_module() -> None:
    contracts = {c["name"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
    server = next(c for name, c in contracts.items() if "chdb HTTP server" in name)
    others = _top_level_modules() - {"citystream.chserver"}
    assert set(server["forbidden_modules"]) == others


def test_detection_contract_forbids_the_engines_and_sources() -> None:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    pure = next(c for c in contracts if c["source_modules"] == ["citystream.detection"])
    for needed in (
        "pyflink",
        "confluent_kafka",
        "clickhouse_connect",
        "chdb",
        "citystream.simulator",
        "citystream.importer",
        "citystream.jobs",
        "citystream.store",
    ):
        assert needed in pure["forbidden_modules"]


def test_libraries_contract_covers_every_module_but_the_cli() -> None:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    libs = next(c for c in contracts if c.get("forbidden_modules") == ["citystream.cli"])
    assert set(libs["source_modules"]) == _top_level_modules() - {"citystream.cli", "citystream.chserver"}


def test_registry_contract_keeps_engines_and_consumers_out() -> None:
    """The jobs, the loader and the CLI import the registry; it must import none of them (nor Flink)."""
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    registry = next(c for c in contracts if c["source_modules"] == ["citystream.registry"])
    needed = {"pyflink", "citystream.jobs", "citystream.cli", "citystream.dashboards", "citystream.simulator"}
    assert needed <= set(registry["forbidden_modules"])
