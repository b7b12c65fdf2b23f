"""The model registry: the only code that reads or writes model versions.

Backed by MLflow's model registry (SQLite by default, Postgres or any SQLAlchemy URL MLflow takes;
artifacts on local disk by default). One registered model, `RegistryConfig.name`; each version
is an MLflow run holding

    model.onnx      the exported scoring graph (its sha256 is a version tag)
    model.pt        {"model_config", "state_dict"}: the weights the next fine-tune starts from
    item_ids.npy    (N+1,) original item id of each dense id (row 0 padding)
    item_counts.npy (N+1,) training interactions per dense id (serving's popularity fallback)
    config.json, metrics.json, curve.png (the training curve)

and tags `g2rec.cycle` (store_id/snapshot_id), `g2rec.snapshot_id`, `g2rec.profile_version`,
`g2rec.onnx_sha256`. The alias `champion` names the promoted version; moving it is one row
update, so a reader sees the old champion or the new one, never a mix. A version is created only
after all its artifacts are logged, so a version that exists is complete.

Serving reads through `ModelRegistry.champion()` (a `ModelVersion` with local paths).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from g2rec.errors import NotFoundError

CHAMPION = "champion"
TAG_CYCLE = "g2rec.cycle"
TAG_SNAPSHOT = "g2rec.snapshot_id"
TAG_PROFILE_VERSION = "g2rec.profile_version"
TAG_SHA256 = "g2rec.onnx_sha256"
TAG_PROMOTED = "g2rec.promoted"
TAG_DECISION = "g2rec.decision"
ARTIFACTS = ("model.onnx", "model.pt", "item_ids.npy", "item_counts.npy", "config.json", "metrics.json", "curve.png")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryConfig:
    """tracking_url: MLflow backend store (SQLAlchemy URL); artifacts: folder for artifacts when the
    experiment is first made (a path or URI); name: the registered model; experiment: runs go here."""

    tracking_url: str = "sqlite:///mlruns/mlflow.db"
    artifacts: str = "mlruns/artifacts"
    name: str = "g2rec"
    experiment: str = "g2rec-training"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, with local paths of its files.

    cycle: "store_id/snapshot_id" of the snapshot it was trained for; profile_version: the profile
    version its interest tokens stand for (a fine-tune keeps its champion's); metrics: as logged
    (validation NDCG@10 under "valid_ndcg@10", ...); onnx_sha256: hex digest of model.onnx.
    """

    version: int
    run_id: str
    cycle: str
    snapshot_id: int
    profile_version: int
    onnx_sha256: str
    onnx_path: Path
    model_path: Path
    item_ids_path: Path
    metrics: dict

    def item_ids(self) -> np.ndarray:
        return np.load(self.item_ids_path)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _local(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise NotFoundError(f"artifact location {uri} is not on local disk",
                            fix="download it with mlflow.artifacts.download_artifacts first")
    return Path(unquote(parsed.path))


class ModelRegistry:
    def __init__(self, cfg: RegistryConfig):
        from mlflow import MlflowClient

        self.cfg = cfg
        if cfg.tracking_url.startswith("sqlite:///"):
            Path(cfg.tracking_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=cfg.tracking_url, registry_uri=cfg.tracking_url)
        self._experiment_id: str | None = None

    # ---- reading --------------------------------------------------------------------------------
    def champion(self) -> ModelVersion | None:
        """The version the `champion` alias names, None before the first promotion."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.cfg.name, CHAMPION)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return self._record(mv)

    def get(self, version: int) -> ModelVersion:
        return self._record(self.client.get_model_version(self.cfg.name, str(version)))

    def by_cycle(self, cycle: str) -> ModelVersion | None:
        """The version registered for a cycle ("store_id/snapshot_id"), if any."""
        if not self._has_model():
            return None
        found = self.client.search_model_versions(f"name='{self.cfg.name}' and tags.`{TAG_CYCLE}`='{cycle}'")
        return self._record(max(found, key=lambda mv: int(mv.version))) if found else None

    def versions(self) -> list[ModelVersion]:
        if not self._has_model():
            return []
        found = self.client.search_model_versions(f"name='{self.cfg.name}'")
        return sorted((self._record(mv) for mv in found), key=lambda v: v.version)

    def promoted(self, version: int) -> bool:
        mv = self.client.get_model_version(self.cfg.name, str(version))
        return mv.tags.get(TAG_PROMOTED) == "true"

    def _record(self, mv) -> ModelVersion:
        root = _local(mv.source)
        metrics = json.loads((root / "metrics.json").read_text())
        return ModelVersion(
            version=int(mv.version), run_id=mv.run_id, cycle=mv.tags.get(TAG_CYCLE, ""),
            snapshot_id=int(mv.tags.get(TAG_SNAPSHOT, -1)), profile_version=int(mv.tags.get(TAG_PROFILE_VERSION, -1)),
            onnx_sha256=mv.tags.get(TAG_SHA256, ""), onnx_path=root / "model.onnx", model_path=root / "model.pt",
            item_ids_path=root / "item_ids.npy", metrics=metrics)

    def _has_model(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.cfg.name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    # ---- writing --------------------------------------------------------------------------------
    def register(self, folder: Path, cycle: str, snapshot_id: int, profile_version: int,
                 params: dict, metrics: dict[str, float]) -> ModelVersion:
        """Log the files of `folder` (ARTIFACTS) as a run, then create the version: a version that
        exists has all its files. A run left by a crash before the version is created stays
        unregistered (its status FAILED says so) and the next attempt makes a fresh one."""
        folder = Path(folder)
        missing = [a for a in ARTIFACTS if not (folder / a).is_file()]
        if missing:
            raise NotFoundError(f"{folder}: no {', '.join(missing)} to register")
        sha = sha256_of(folder / "model.onnx")
        run = self.client.create_run(self._experiment(), tags={TAG_CYCLE: cycle}, run_name=f"cycle-{cycle}")
        run_id = run.info.run_id
        try:
            for key, value in params.items():
                self.client.log_param(run_id, key, str(value)[:500])
            for key, value in metrics.items():
                self.client.log_metric(run_id, key.replace("@", "_at_"), float(value))
            for name in ARTIFACTS:
                self.client.log_artifact(run_id, str(folder / name))
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        if not self._has_model():
            self.client.create_registered_model(self.cfg.name)
        mv = self.client.create_model_version(
            self.cfg.name, source=run.info.artifact_uri, run_id=run_id,
            tags={TAG_CYCLE: cycle, TAG_SNAPSHOT: str(snapshot_id), TAG_PROFILE_VERSION: str(profile_version),
                  TAG_SHA256: sha})
        return self._record(mv)

    def decide(self, version: int, decision: str) -> None:
        """Record why a version was or was not promoted."""
        self.client.set_model_version_tag(self.cfg.name, str(version), TAG_DECISION, decision[:5000])

    def promote(self, version: int) -> bool:
        """Point `champion` at `version`; False (and nothing changes) when it already was promoted
        once, so no version is promoted twice. The alias moves first, then the version is tagged:
        a crash between the two leaves the alias right and `promote` finishes the tag."""
        mv = self.client.get_model_version(self.cfg.name, str(version))
        if mv.tags.get(TAG_PROMOTED) == "true":
            return False
        current = self.champion()
        if current is None or current.version != version:
            self.client.set_registered_model_alias(self.cfg.name, CHAMPION, str(version))
        self.client.set_model_version_tag(self.cfg.name, str(version), TAG_PROMOTED, "true")
        return True

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.cfg.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                location = self.cfg.artifacts
                if "://" not in location:
                    location = Path(location).resolve().as_uri()
                self._experiment_id = self.client.create_experiment(self.cfg.experiment, artifact_location=location)
        return self._experiment_id
