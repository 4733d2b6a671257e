#!/usr/bin/env python3
"""Fail CI when a schema change would break readers of data already in Kafka.

Contract
  Usage:   python .ci/check_schemas.py [--repo DIR] [--base REF | --history]
           (run with the project's venv python; .ci/run calls it from the checkout root)
  Checks:  every avro/*.avsc of the working tree of DIR (default: the checkout
           holding this script) must
             1. be a valid Avro schema named <namespace>.<Name>.avsc;
             2. be mirrorable by Flink SQL's avro format (no enum/map/fixed,
                unions only ["null", X], timestamps long timestamp-millis);
             3. be BACKWARD compatible with the same file on the base branch: a
                reader holding the new schema can read data written with the old
                one (Avro resolution rules + the project's logical-type and
                field-order rules, see citystream.contracts.check_backward).
           The base is REF if given, else `main`, else `origin/main`. A file the
           base lacks is new and fine; a base that is missing or identical is
           reported and passes. A file deleted since the base is reported, not failed.
           --history (what CI uses: on a fresh clone of main the working tree IS
           main) checks against every earlier commit that changed avro/, i.e.
           transitive BACKWARD compatibility with every version ever landed.
  Output:  one line per schema and a summary on stdout; each problem as
           "avro/FILE: PATH: RULE: what to do" on stderr.
  Exit:    0 all fine; 1 a schema is incompatible or not Flink-readable;
           2 bad usage, unreadable schema files or git failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from citystream import contracts  # noqa: E402
from citystream.errors import UserError  # noqa: E402


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)


def find_base(repo: Path, wanted: str | None) -> str | None:
    """The first of REF / main / origin/main that names a commit, or None."""
    for ref in [wanted] if wanted else ["main", "origin/main"]:
        if _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0:
            return ref
    return None


def base_texts(repo: Path, ref: str) -> dict[str, str]:
    """File name -> text of every avro/*.avsc at ``ref``."""
    listing = _git(repo, "ls-tree", "--name-only", f"{ref}", "avro/")
    if listing.returncode != 0:
        raise UserError(f"git ls-tree {ref} avro/ failed: {listing.stderr.strip()}")
    texts = {}
    for path in listing.stdout.splitlines():
        if path.endswith(".avsc"):
            shown = _git(repo, "show", f"{ref}:{path}")
            if shown.returncode != 0:
                raise UserError(f"git show {ref}:{path} failed: {shown.stderr.strip()}")
            texts[Path(path).name] = shown.stdout
    return texts


def compare(ref: str, old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """Problems of every schema changed since ``ref``; prints one line per schema."""
    problems = []
    for full in sorted(set(old) - set(new)):
        print(f"  removed  {full}: readers of its old data need the schema from {ref}")
    for full in sorted(new):
        if full not in old:
            print(f"  new      {full}")
        elif new[full] == old[full]:
            print(f"  same     {full}")
        else:
            issues = contracts.check_backward(new[full], old[full])
            problems += [f"avro/{full}.avsc: {issue}" for issue in issues]
            print(f"  {'BREAKING' if issues else 'changed   (backward compatible)'} {full}")
    return problems


def history(repo: Path) -> list[str]:
    """Commits that changed avro/, newest first (empty outside git or in a shallow clone's edge)."""
    listed = _git(repo, "rev-list", "HEAD", "--", "avro/")
    return listed.stdout.split() if listed.returncode == 0 else []


def check(repo: Path, wanted: str | None, all_history: bool = False) -> int:
    avro_dir = repo / "avro"
    if not avro_dir.is_dir():
        raise UserError(f"{avro_dir}: no avro/ directory")
    new_texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(avro_dir.glob("*.avsc"))}
    new = contracts.load_texts(new_texts)
    for schema in new.values():
        contracts.parse(schema)
    problems: list[str] = []
    for full, schema in new.items():
        problems += [f"avro/{full}.avsc: {p}" for p in contracts.flink_violations(schema)]

    if all_history:
        commits = history(repo)
        print(f"check_schemas: comparing with {len(commits)} earlier version(s) of avro/")
        for commit in commits:
            old_texts = base_texts(repo, commit)
            if old_texts != new_texts:
                try:
                    old = contracts.load_texts(old_texts)
                except UserError as exc:
                    print(f"check_schemas: the schemas at {commit[:10]} do not load ({exc}): skipped")
                    continue
                problems += compare(commit[:10], old, new)
        return _report(problems, new)

    ref = find_base(repo, wanted)
    if ref is None and wanted:
        raise UserError(f"--base {wanted}: no such branch or commit in {repo}")
    old_texts = base_texts(repo, ref) if ref else {}
    if ref is None:
        print("check_schemas: no main or origin/main branch to compare with: compatibility not checked")
    elif old_texts == new_texts:
        print(f"check_schemas: avro/ is identical to {ref}: nothing to compare")
    else:
        try:
            old = contracts.load_texts(old_texts)
            for schema in old.values():
                contracts.parse(schema)
        except UserError as exc:
            # a broken base must not block the branch that repairs it
            print(f"check_schemas: the schemas on {ref} do not load ({exc}): compatibility not checked")
        else:
            problems += compare(ref, old, new)

    return _report(problems, new)


def _report(problems: list[str], new: dict[str, dict]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check_schemas: {len(problems)} problem(s); see above", file=sys.stderr)
        return 1
    print(f"check_schemas: {len(new)} schema(s) OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check avro/*.avsc for BACKWARD compatibility with main.")
    parser.add_argument("--repo", type=Path, default=HERE, help="git checkout to check (default: this one)")
    parser.add_argument("--base", default=None, help="branch or commit to compare with (default: main)")
    parser.add_argument(
        "--history",
        action="store_true",
        help="compare with every earlier committed version of avro/ (transitive)",
    )
    args = parser.parse_args(argv)
    try:
        return check(args.repo.resolve(), args.base, args.history)
    except UserError as exc:
        print(f"check_schemas: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
