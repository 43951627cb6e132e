"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary folder, started
on a free port of 127.0.0.1, removed when stopped. Needs the server binaries (Debian: ``apt-get
install postgresql``). PostgreSQL refuses to run as root: as root it runs as the ``postgres``
user, which the Debian package creates."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def find_binary(name: str) -> str | None:
    """``initdb`` or ``pg_ctl``: on PATH, or in the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg: pg.url``: a database nobody else uses."""

    def __init__(self, fsync: bool = False) -> None:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
                "apt-get install postgresql"
            )
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.fsync = fsync
        self.folder = tempfile.mkdtemp(prefix="navistore-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = _free_port()
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise PermissionError(
                    "PostgreSQL will not run as root and there is no 'postgres' user"
                ) from None
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self.url = f"postgresql://navistore@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr or result.stdout}")

    def start(self) -> ThrowawayPostgres:
        self._run(
            self.initdb,
            "-D",
            self.data,
            "-U",
            "navistore",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            f"-c max_connections=200 -c fsync={'on' if self.fsync else 'off'} "
            "-c synchronous_commit=on -c full_page_writes=off"
        )
        self._run(
            self.pg_ctl,
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.folder, "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
