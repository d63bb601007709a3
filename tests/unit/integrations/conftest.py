"""--import-mode=importlib puts no test folder on sys.path: the tests here share ``runs`` from this one."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
