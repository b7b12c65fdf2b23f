"""Where the model to serve comes from: a ModelSource names the current ModelVersion.

- RunDirSource(RUN_DIR): the run directory itself. A retrain in place (model.pt replaced) is
  re-exported and becomes the current version.
- PointerSource(DIR): DIR/current names the run directory to serve: a symlink to it, or a text
  file holding its path (relative to DIR or absolute). Promote a run by replacing `current`
  atomically, e.g. `ln -sfn runs/r2 DIR/current.new && mv -T DIR/current.new DIR/current`.
- RegistrySource(registry, CACHE): the registry's champion. Its files are copied into
  CACHE/v<version>-<sha256 prefix>/ (model.onnx checked against the sha256 the registry recorded) and served as a
  run directory; promoting another version is a swap.

`current()` is cheap while nothing changed (a few stat calls); it re-reads, re-exports or
re-hashes only when a watched file's (inode, size, mtime) moved.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from g2rec.errors import DataError, NotFoundError
from registry import ModelRegistry, sha256_of
from registry import ModelVersion as RegisteredVersion
from serving.run_dir import MANIFEST, ModelVersion, prepare_run, read_version


class ModelSource(Protocol):
    def current(self) -> ModelVersion:
        """The version to serve now. Raises a G2RecError when it cannot be read; the caller keeps
        serving what it has."""
        ...


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


class RunDirSource:
    """A run directory: model.pt and the manifest are watched."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._stamps: tuple | None = None
        self._version: ModelVersion | None = None

    def current(self) -> ModelVersion:
        stamps = tuple(_stamp(self.run_dir / n) for n in ("model.pt", MANIFEST))
        if stamps != self._stamps or self._version is None:
            prepare_run(self.run_dir)
            version = read_version(self.run_dir)
            # Stamped before export: a model.pt that changes while exporting is seen next time.
            self._stamps, self._version = stamps, version
        return self._version


class PointerSource:
    """DIR/current (a symlink or a file holding a path) -> that run directory's RunDirSource."""

    def __init__(self, watch_dir: Path):
        self.watch_dir = Path(watch_dir)
        self._runs: dict[Path, RunDirSource] = {}

    def run_dir(self) -> Path:
        pointer = self.watch_dir / "current"
        if pointer.is_symlink() or pointer.is_dir():
            target = Path(os.path.realpath(pointer))
        elif pointer.is_file():
            target = self.watch_dir / pointer.read_text().strip()  # an absolute path replaces the base
        else:
            raise NotFoundError(f"{pointer}: no such symlink or pointer file",
                                fix=f"ln -s RUN_DIR {pointer}, or write the run directory's path into it")
        if not target.is_dir():
            raise NotFoundError(f"{pointer} names {target}, which is not a directory")
        return target.resolve()

    def current(self) -> ModelVersion:
        target = self.run_dir()
        if target not in self._runs:
            self._runs = {target: RunDirSource(target)}  # the previous run is no longer watched
        return self._runs[target].current()


class RegistrySource:
    """The model registry's champion (registry/), served from a local copy in cache_dir."""

    def __init__(self, registry: ModelRegistry, cache_dir: Path):
        self.registry = registry
        self.cache_dir = Path(cache_dir)
        self._runs: dict[int, RunDirSource] = {}
        self._profile_version: str | None = None

    def current(self) -> ModelVersion:
        version = self._champion_run()
        return replace(self._runs[version].current(), profile_version=self._profile_version)

    def run_dir(self) -> Path:
        """The local run directory of the current champion (for batch scoring)."""
        return self._runs[self._champion_run()].run_dir

    def _champion_run(self) -> int:
        champion = self.registry.champion()
        if champion is None:
            raise NotFoundError(f"the registry at {self.registry.cfg.tracking_url} has no champion yet",
                                fix="run `g2rec train-service` until it promotes a version")
        if champion.version not in self._runs:
            self._runs = {champion.version: RunDirSource(self._stage(champion))}
            self._profile_version = str(champion.profile_version)
        return champion.version

    def _stage(self, champion: RegisteredVersion) -> Path:
        """CACHE/v<version>-<digest>/: the version's files, its ONNX graph checked against the registry."""
        # Keyed by version and graph digest: caches of two registries never collide.
        target = self.cache_dir / f"v{champion.version}-{champion.onnx_sha256[:16]}"
        if target.is_dir():
            return target
        if sha256_of(champion.onnx_path) != champion.onnx_sha256:
            raise DataError(f"{champion.onnx_path}: sha256 differs from the one registered for version "
                            f"{champion.version}", fix="re-register the version; its artifact was changed")
        tmp = self.cache_dir / f".v{champion.version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        root = champion.onnx_path.parent
        for name in ("model.pt", "item_ids.npy", "item_counts.npy"):
            shutil.copy2(root / name, tmp / name)
        os.replace(tmp, target)
        return target
