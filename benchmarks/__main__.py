"""``make bench`` / ``python -m benchmarks``: every benchmark module in turn, each in its own process.

Contract: runs ``python -m benchmarks.<name>`` for each module below that
exists, prints their output (rates and ratios against baselines measured in
the same run), and exits non-zero if any of them failed. Benchmarks are not
tests: their numbers depend on the machine and on what else runs on it.
``python -m benchmarks NAME ...`` runs only the named ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: In the order they run; a module that does not exist (yet) is skipped.
MODULES = ["jobs", "store", "producer", "backtest"]


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    wanted = argv or [m for m in MODULES if (here / f"{m}.py").exists()]
    failed = []
    for name in wanted:
        print(f"== benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
