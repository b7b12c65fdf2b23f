"""`feast serve` for other services, bound to 127.0.0.1, configured from a StoreConfig.

The plain CLI works too (`cd features && feast serve -h 127.0.0.1 -p 6566` with the checked-in
feature_store.yaml); this module writes the resolved config (absolute paths, chosen backend) to
<root>/data/feature_store.<backend>.yaml and runs the same `feast serve` on it.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from g2rec.errors import ConfigError, NotFoundError, UnavailableError
from infra.process import launch
from infra.process import stop as stop_process

from .config import StoreConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def feast_executable() -> str:
    """The `feast` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "feast"
    found = str(beside) if beside.is_file() else shutil.which("feast")
    if not found:
        raise NotFoundError("no `feast` executable beside this Python or on PATH", fix="install the project (`make venv`)")
    return found


def write_yaml(config: StoreConfig) -> Path:
    path = config.data_dir / f"feature_store.{config.online}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_yaml())
    return path


def serve_command(config: StoreConfig, port: int, host: str = "127.0.0.1") -> list[str]:
    if host not in LOOPBACK:
        raise ConfigError(f"host={host!r}", "the feature server binds to loopback only (127.0.0.1)")
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

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    proc = launch(serve_command(config, port), log_path, healthy, f"http://127.0.0.1:{port}/health",
                  ready_timeout_s, UnavailableError, "feast serve")
    return FeatureServer(proc.pid, port, log_path)


def stop(server: FeatureServer, timeout_s: float = 15.0) -> None:
    """SIGTERM the server's process group (it leads its own session), SIGKILL after timeout_s."""
    stop_process(server.pid, timeout_s, group=True)
