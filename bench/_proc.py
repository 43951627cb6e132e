"""What a bench reads of a process, and asks of its own: CPU time, resident memory, room for open
files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.server import raise_open_file_limit  # noqa: E402


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process, all its threads; or of its thread ``tid`` alone."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def voluntary_switches(pid: int) -> int:
    """The voluntary context switches of process ``pid`` so far, all its threads."""
    switches = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        switches += sum(int(s.split()[1]) for s in lines if s.startswith("voluntary_ctxt"))
    return switches


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def room_for_files(wanted: int) -> None:
    """Raise this process's soft limit on open files to ``wanted`` (as navistore serve does its
    own), or stop the bench saying why it cannot."""
    have = raise_open_file_limit(wanted)
    if have < wanted:
        raise SystemExit(f"needs {wanted} open files; the hard limit (ulimit -Hn) allows {have}")
