"""Process and port helpers shared by the development servers (Kafka broker, Redis, Postgres)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from g2rec.errors import DataError



def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0); reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop(pid: int, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the process, then SIGKILL if it has not exited within timeout_s."""
    if not alive(pid):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def write_pidfile(pidfile: str | os.PathLike, pid: int) -> None:
    Path(pidfile).parent.mkdir(parents=True, exist_ok=True)
    Path(pidfile).write_text(f"{pid}\n")


def stop_pidfile(pidfile: str | os.PathLike, stop_fn) -> None:
    """Stop the process a pidfile names with `stop_fn(pid)`, then remove the pidfile."""
    text = Path(pidfile).read_text().strip()
    if not text.isdigit():
        raise DataError(f"{pidfile}: expected a pid, found {text!r}")
    stop_fn(int(text))
    Path(pidfile).unlink()


def wait_ready(proc, ready, timeout_s: float, what: str) -> str | None:
    """Poll `ready()` until it holds (None), or say why not: the process exited, or it did not
    answer on `what` within timeout_s (then it is stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        if ready():
            return None
        time.sleep(0.05)
    stop(proc.pid)
    return f"did not answer on {what} within {timeout_s}s"
