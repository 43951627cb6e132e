"""A scratch folder for a bench run, removed when the bench exits, however it exits (a run of
bench/scale.py leaves 210 MB of database behind otherwise)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def scratch(prefix: str) -> Path:
    """A new folder under the system's temporary directory, gone at exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
