"""`python jobs/replay.py ...`: what `ray job submit -- python jobs/replay.py ...` runs, the `log-replay` command.

A thin wrapper: the command is `pipeline.commands.replay`, installed as the console script `log-replay`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.commands.replay import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
