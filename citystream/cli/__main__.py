"""``python -m citystream.cli``: the same command line as ``citystream`` (the stack and tests start it so)."""

import sys

from citystream.cli import main

sys.exit(main())
