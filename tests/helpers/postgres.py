"""A private PostgreSQL cluster for a test: Debian's server binaries (``apt-get install postgresql``,
scripts/setup.sh --test), ``initdb`` into a fresh temporary folder, ``pg_ctl start`` on a free port of
127.0.0.1 with password (scram) authentication, one database; stopped and deleted afterwards.

PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the ``postgres`` user that the
Debian package creates, and every server command runs as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


def pg_bin_dir() -> Path | None:
    """The folder of ``initdb`` / ``pg_ctl``: $REWARDKIT_PG_BIN, Debian's newest /usr/lib/postgresql/N/bin,
    else $PATH."""
    if os.environ.get("REWARDKIT_PG_BIN"):
        return Path(os.environ["REWARDKIT_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def pg_missing_reason() -> str | None:
    """None if a cluster can be started here; else why not."""
    b = pg_bin_dir()
    if b is None or not (b / "initdb").exists() or not (b / "pg_ctl").exists():
        return "PostgreSQL server not installed (apt-get install postgresql; scripts/setup.sh --test)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@dataclass
class PgCluster:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str
    bin_dir: Path
    data_dir: Path

    def url(self, with_password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if with_password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    def psql(self, sql: str) -> str:
        """One SQL statement through psql over TCP with the password; its unaligned output."""
        r = subprocess.run([str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user,
                            "-d", self.dbname, "-At", "-c", sql], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PGPASSWORD": self.password})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@contextmanager
def private_cluster(password: str, dbname: str = "labelstudio", user: str = "rk") -> Iterator[PgCluster]:
    """Start a throw-away cluster (fsync off: nothing in it outlives the test) and yield it."""
    from rewardkit.annotation.server import find_free_port

    bin_dir = pg_bin_dir()
    assert bin_dir is not None
    as_user: dict = {}
    base = Path(tempfile.mkdtemp(prefix="rk-pg-"))  # not under pytest's root-only tmp folder
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data = base / "data"
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, as_user["user"], as_user["group"])

    def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120,
                           cwd=str(base), **as_user, **kw)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr, (base / "log").read_text() if (base / "log").exists() else "")
        return r

    port = find_free_port()
    started = False
    try:
        run("initdb", "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
            "--locale=C")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        run("pg_ctl", "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w", "-t", "60", "start")
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, dbname,
            env={**os.environ, "PGPASSWORD": password})
        yield PgCluster(host="127.0.0.1", port=port, user=user, password=password, dbname=dbname, bin_dir=bin_dir,
                        data_dir=data)
    finally:
        if started:
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                           timeout=60, cwd=str(base), **as_user)
        shutil.rmtree(base, ignore_errors=True)
