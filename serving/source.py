"""Where the model to serve comes from: a ModelSource names the current ModelVersion. Two sources
today, both over run directories; a model registry plugs in later as a third with the same
`current()`.

- RunDirSource(RUN_DIR): the run directory itself. A retrain in place (model.pt replaced) is
  re-exported and becomes the current version.
- PointerSource(DIR): DIR/current names the run directory to serve: a symlink to it, or a text
  file holding its path (relative to DIR or absolute). Promote a run by replacing `current`
  atomically, e.g. `ln -sfn runs/r2 DIR/current.new && mv -T DIR/current.new DIR/current`.

`current()` is cheap while nothing changed (a few stat calls); it re-reads, re-exports or
re-hashes only when a watched file's (inode, size, mtime) moved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from g2rec.errors import NotFoundError
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
