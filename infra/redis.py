"""A real Redis on 127.0.0.1 for development and tests: Debian's redis-server.

Install with `make system-deps` (apt package redis-server). The server runs in the foreground of
its own session (no daemonize), without persistence (--save "" --appendonly no): it is an online
feature cache, and tests want a clean one each time. Stopped by pid.

Command line:
    python -m infra.redis start --pidfile .run/redis.pid [--port 6379]
    python -m infra.redis stop --pidfile .run/redis.pid
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


from g2rec.errors import UnavailableError
from infra.process import claim, launch, listening, server_cli, stop


class ServerError(UnavailableError):
    """A development server could not be found, started or reached."""


def redis_binary() -> Path:
    """$G2REC_REDIS_SERVER, else redis-server on PATH, else Debian's /usr/bin/redis-server."""
    override = os.environ.get("G2REC_REDIS_SERVER")
    found = override or shutil.which("redis-server") or "/usr/bin/redis-server"
    path = Path(found)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ServerError(f"no redis-server at {path}; install it with `make system-deps` "
                          "(Debian package redis-server)")
    return path


@dataclass(frozen=True)
class RedisServer:
    pid: int
    port: int
    dir: Path

    @property
    def address(self) -> str:
        """host:port, the form Feast's connection_string takes."""
        return f"127.0.0.1:{self.port}"


def start(port: int | None = None, data_dir: str | os.PathLike | None = None,
          ready_timeout_s: float = 15.0) -> RedisServer:
    """Start redis-server on 127.0.0.1:port (a free port when None) and wait for PING."""
    binary = redis_binary()
    port, data_dir = claim(port, data_dir, "g2rec-redis-", ServerError)
    log_path = data_dir / f"redis-{port}.log"
    cmd = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
           "--save", "", "--appendonly", "no", "--dir", str(data_dir), "--daemonize", "no",
           "--logfile", str(log_path)]
    proc = launch(cmd, log_path, lambda: listening(port) and _ping(port), f"127.0.0.1:{port}", ready_timeout_s,
                  ServerError, "redis-server", capture=False)  # it writes log_path itself
    return RedisServer(pid=proc.pid, port=port, dir=data_dir)


def _ping(port: int) -> bool:
    import redis

    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


main = server_cli("Start and stop a development Redis (Debian's redis-server) on 127.0.0.1.", start, stop,
                  lambda server: f"redis-server pid={server.pid} address={server.address} dir={server.dir}")


if __name__ == "__main__":
    main()
