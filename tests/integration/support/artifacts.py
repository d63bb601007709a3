"""Per-test artifact folders: worker logs, bilge's data directory and reports, kept for debugging."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ARTIFACTS_ROOT = Path(__file__).resolve().parents[3] / "test-artifacts"


def artifacts_dir(name: str) -> Path:
    """An empty ``test-artifacts/<name>/`` folder at the repository root (git-ignored)."""
    path = ARTIFACTS_ROOT / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
