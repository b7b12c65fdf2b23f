"""`feast serve` for other services, bound to 127.0.0.1, configured from a StoreConfig.

The plain CLI works too (`cd features && feast serve -h 127.0.0.1 -p 6566` with the checked-in
feature_store.yaml); this module writes the resolved config (absolute paths, chosen backend) to
<root>/data/feature_store.<backend>.yaml and runs the same `feast serve` on it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import StoreConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def feast_executable() -> str:
    """The `feast` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "feast"
    found = str(beside) if beside.is_file() else shutil.which("feast")
    if not found:
        raise FileNotFoundError("no `feast` executable beside this Python or on PATH")
    return found


def write_yaml(config: StoreConfig) -> Path:
    path = config.data_dir / f"feature_store.{config.online}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_yaml())
    return path


def serve_command(config: StoreConfig, port: int, host: str = "127.0.0.1") -> list[str]:
    if host not in LOOPBACK:
        raise ValueError(f"host={host!r}: the feature server binds to loopback only (127.0.0.1)")
    return [feast_executable(), "-c", str(config.root), "-f", str(write_yaml(config)), "serve",
            "-h", host, "-p", str(port), "--no-access-log", "-w", "1", "--registry_ttl_sec", "5"]


@dataclass(frozen=True)
class FeatureServer:
    pid: int
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(config: StoreConfig, port: int, log_path: Path, ready_timeout_s: float = 90.0) -> FeatureServer:
    """Start `feast serve` in the background and wait until GET /health answers 200."""
    import urllib.error
    import urllib.request

    cmd = serve_command(config, port)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = FeatureServer(proc.pid, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"feast serve exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=1) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"feast serve did not become healthy on {server.url} in {ready_timeout_s}s; see {log_path}")



def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: ask the kernel whether it still exists
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True


def stop(server: FeatureServer, timeout_s: float = 15.0) -> None:
    """SIGTERM the server's process group (it leads its own session), SIGKILL after timeout_s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _exited(server.pid):
            return
        time.sleep(0.1)
    os.killpg(server.pid, signal.SIGKILL)
    while not _exited(server.pid):
        time.sleep(0.05)
