"""Process and port helpers shared by the development servers (Kafka broker, Redis, Postgres,
feast serve): one launch-and-wait loop, one stop, one start/stop command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

from g2rec.errors import DataError, G2RecError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def claim(port: int | None, data_dir: str | os.PathLike | None, prefix: str,
          error: type[G2RecError]) -> tuple[int, Path]:
    """A loopback port for a new server (a free one when None; `error` when it is taken) and its
    directory (created; a new temp dir when None)."""
    port = port or free_port()
    if listening(port):
        raise error(f"port {port} on 127.0.0.1 is already in use", fix="choose another port or let one be picked")
    path = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    return port, path


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


def stop(pid: int, timeout_s: float = 10.0, sig: int = signal.SIGTERM, group: bool = False) -> None:
    """Send `sig` to the process (to its whole process group when `group`: it leads its own
    session), then SIGKILL if it has not exited within timeout_s, and wait until it is gone."""
    kill = os.killpg if group else os.kill
    if not alive(pid):
        return
    try:
        kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5.0  # a zombie whose parent is not us may linger until reaped
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


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


def launch(cmd: list[str], log_path: Path, ready: Callable[[], bool], what: str, timeout_s: float,
           error: type[G2RecError], name: str, capture: bool = True, **popen: Any) -> subprocess.Popen:
    """Start `cmd` in a new session (it survives the caller's Ctrl-C and is stopped by pid), its
    output appended to log_path when `capture`, and poll `ready()` until it holds. Raises `error`
    naming the log when the process exits first or does not answer on `what` within timeout_s
    (then it is stopped). This is the readiness loop of every development server launcher."""
    with open(log_path, "ab") if capture else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **popen)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{name} exited with code {proc.returncode}; see {log_path}")
        if ready():
            return proc
        time.sleep(0.05)
    stop(proc.pid)
    raise error(f"{name} did not answer on {what} within {timeout_s}s; see {log_path}")


def server_cli(doc: str, start: Callable[[int | None, str | None], Any], stop_pid: Callable[[int], None],
               describe: Callable[[Any], str]) -> click.Group:
    """`python -m infra.NAME start|stop`: the command-line shell every launcher shares.

    start(port, dir) starts a server, describe(server) is the line printed after it started, and
    stop_pid(pid) stops it by the pid written to --pidfile."""
    from cli.errors import TranslatingGroup

    @click.group(cls=TranslatingGroup, help=doc)
    def main() -> None:
        pass

    @main.command("start")
    @click.option("--port", type=int, default=None, help="Loopback port (default: a free one).")
    @click.option("--pidfile", type=click.Path(dir_okay=False), required=True)
    @click.option("--dir", "data_dir", type=click.Path(file_okay=False), default=None,
                  help="Directory for data and logs (default: a new temp dir).")
    def start_cmd(port: int | None, pidfile: str, data_dir: str | None) -> None:
        server = start(port, data_dir)
        write_pidfile(pidfile, server.pid)
        click.echo(describe(server))

    @main.command("stop")
    @click.option("--pidfile", type=click.Path(dir_okay=False, exists=True), required=True)
    def stop_cmd(pidfile: str) -> None:
        stop_pidfile(pidfile, stop_pid)

    return main
