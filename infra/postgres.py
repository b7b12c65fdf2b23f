"""A real Postgres on 127.0.0.1 for development and tests: Debian's postgresql.

Install with `make system-deps` (apt package postgresql). `start` runs initdb into a fresh data
directory (trust auth, superuser g2rec, database g2rec) and starts `postgres` in the foreground
of its own session; `stop` shuts it down by pid. Postgres refuses to run as root, so when we are
root the server runs as the `postgres` system user the Debian package creates. Durability is off
(fsync, synchronous_commit): it is a disposable online feature store for development and tests.
Feast's Postgres online store needs `sslmode: disable` against it (there is no certificate).

Command line:
    python -m infra.postgres start --pidfile .run/pg.pid [--port 5432] [--dir .run/pg]
    python -m infra.postgres stop --pidfile .run/pg.pid
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


from infra.process import claim, launch, listening, server_cli
from infra.process import stop as stop_process
from infra.redis import ServerError

USER = "g2rec"
PASSWORD = "g2rec"  # trust auth ignores it; Feast's config requires one
DATABASE = "g2rec"


def bin_dir() -> Path:
    """$G2REC_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else initdb's folder on PATH."""
    override = os.environ.get("G2REC_PG_BIN")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
    )[::-1]
    initdb = shutil.which("initdb")
    if not override and initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise ServerError("no Postgres server binaries (initdb, postgres) found; install them with "
                      "`make system-deps` (Debian package postgresql) or set G2REC_PG_BIN")


def _run_as() -> str | None:
    """The user to run the server as: `postgres` when we are root (Postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as e:
        raise ServerError("running as root but there is no `postgres` user to run the server as") from e
    return "postgres"


@dataclass(frozen=True)
class PostgresServer:
    pid: int
    port: int
    dir: Path
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} dbname={self.database}"

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy URL (psycopg 3) of `database` (default: the g2rec database)."""
        return (f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{database or self.database}")

    def create_database(self, name: str) -> str:
        """Create database `name` if it does not exist; returns its SQLAlchemy URL."""
        if not _create_database(self.port, name):
            raise ServerError(f"postgres on 127.0.0.1:{self.port} refused to create database {name!r}")
        return self.url(name)


def start(port: int | None = None, data_dir: str | os.PathLike | None = None,
          ready_timeout_s: float = 30.0) -> PostgresServer:
    """initdb a fresh cluster in data_dir (a new temp dir when None), start it on 127.0.0.1:port
    (a free port when None) and create the g2rec database."""
    bindir = bin_dir()
    port, base = claim(port, data_dir, "g2rec-pg-", ServerError)
    pgdata, sockets, log_path = base / "pgdata", base / "sockets", base / f"postgres-{port}.log"
    if pgdata.exists():
        raise ServerError(f"{pgdata} already exists; start wants a fresh directory")
    sockets.mkdir(exist_ok=True)
    user = _run_as()
    if user:
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for p in (base, sockets):
            os.chown(p, uid, gid)
        log_path.touch()
        os.chown(log_path, uid, gid)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(pgdata), "-U", USER, "--auth=trust", "--encoding=UTF8",
         "--no-sync", "--no-instructions"],
        user=user, capture_output=True, text=True, cwd=base,
    )
    if init.returncode != 0:
        raise ServerError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
    cmd = [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port),
           "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
           "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
           "-c", "max_connections=50"]
    proc = launch(cmd, log_path, lambda: listening(port) and _create_database(port), f"127.0.0.1:{port}",
                  ready_timeout_s, ServerError, "postgres", user=user, cwd=base)
    return PostgresServer(pid=proc.pid, port=port, dir=base)


def _create_database(port: int, name: str = DATABASE) -> bool:
    import psycopg

    try:
        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres",
                             autocommit=True, connect_timeout=2) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return True
    except psycopg.OperationalError:
        return False


def stop(pid: int, timeout_s: float = 15.0) -> None:
    """Fast shutdown (SIGINT: abort open transactions, close clients), SIGKILL after timeout_s."""
    stop_process(pid, timeout_s, signal.SIGINT)


main = server_cli("Start and stop a development Postgres (Debian's postgresql) on 127.0.0.1.", start, stop,
                  lambda server: f"postgres pid={server.pid} port={server.port} dir={server.dir} dsn='{server.dsn}'")


if __name__ == "__main__":
    main()
