"""A throwaway PostgreSQL cluster for tests: Debian's postgresql binaries, a temp dir, a free loopback port.

PostgreSQL refuses to run as root, and CI runs as root; then the cluster is created and run as the
``postgres`` system user (which the Debian package creates) through ``runuser``, in a directory that
user owns. As any other user it simply runs as that user. Tests skip with the reason when PostgreSQL
or a way to drop root is missing.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One cluster; :meth:`new_database` hands each test its own empty database.

    Raises
    ------
    RuntimeError
        With the reason, when PostgreSQL cannot be started here (callers turn it into a skip).
    """

    USER = "bedtime"

    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.prefix: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix="bedtime-pg-"))
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
            if runuser is None:
                raise RuntimeError("running as root and runuser(1) is missing")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.port = _free_port()
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "30", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                  f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200", "start")

    def _run(self, tool: str, *args: str) -> None:
        cmd = self.prefix + [str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if proc.returncode != 0:
            log = (self.dir / "server.log").read_text() if (self.dir / "server.log").exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()} {log[-500:]}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty namespace for one test; return its SQLAlchemy URL.

        Each test gets its own *schema* in one database (selected through ``search_path``) rather than its
        own database: a new database copies the whole template (~8 MB) to disk, a schema costs nothing.
        """
        import psycopg
        from psycopg import sql

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        for _ in range(20):
            try:
                shutil.rmtree(self.dir)
                return
            except OSError:
                time.sleep(0.1)


def db_url_for(request, tmp_path: Path) -> str:
    """The URL for a ``db_url`` fixture parametrised with ``"sqlite"`` / ``"postgresql"``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("postgres").new_database()
