"""`python jobs/inventory.py ...`: the `log-inventory` command.

A thin wrapper: the command is `pipeline.commands.inventory`, installed as the console script `log-inventory`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.commands.inventory import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
