"""The g2rec feature repo opened against one StoreConfig: Feast's FeatureStore, its definitions,
and bulk online access (features/backends.py) for the configured backend.

A FeatureRepo holds connections: use one per thread (a SQLite connection shared between a
writing and a reading thread would show the reader uncommitted rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.data_source import DataSource
from feast.errors import FeatureViewNotFoundException
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Array, Float32, Int64, String

from . import data_sources, entities, feature_services, feature_views
from .config import StoreConfig
from .versions import VersionLog
from .backends import OnlineBackend, StoreNotAppliedError, make_backend

_ARROW_TYPES = {
    Int64: pa.int64(),
    String: pa.string(),
    Array(Int64): pa.list_(pa.int64()),
    Array(Float32): pa.list_(pa.float32()),
}


def definitions() -> list:
    """Every Feast object defined in entities.py, data_sources.py, feature_views.py and
    feature_services.py: what `feast apply` finds when it scans the repo."""
    found: list = []
    for module in (entities, data_sources, feature_views, feature_services):
        for obj in vars(module).values():
            if isinstance(obj, (Entity, DataSource, FeatureView, FeatureService)) and not any(obj is o for o in found):
                found.append(obj)
    return found


class FeatureRepo:
    """Open with a StoreConfig; `apply()` once per fresh store (like `feast apply`)."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.repo_config = config.repo_config()
        self.store = FeatureStore(config=self.repo_config)
        self._views: dict[str, FeatureView] = {}
        self._backend: OnlineBackend | None = None
        self._versions: VersionLog | None = None

    def apply(self) -> None:
        """Register the definitions and create online tables; create empty offline parquet files
        with each view's schema so the file offline store can be queried and appended to."""
        objs = definitions()
        self.store.apply(objs)
        self._views.clear()
        for view in (o for o in objs if isinstance(o, FeatureView)):
            self.ensure_offline_file(view)

    def ensure_offline_file(self, view: FeatureView) -> None:
        """Create the view's offline parquet file, empty with its schema, if it is missing
        (Feast's file offline store appends only to an existing file). The event log is a folder
        the stream worker fills, so it is left alone."""
        source = view.batch_source
        if not isinstance(source, FileSource) or source.name == data_sources.user_event_log.name:
            return
        path = Path(FileSource.get_uri_for_file_path(self.repo_config.repo_path, source.path))
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(offline_schema(view).empty_table(), path)

    def view(self, name: str) -> FeatureView:
        """A feature view as registered (cached for the life of this object)."""
        if name not in self._views:
            try:
                self._views[name] = self.store.get_feature_view(name)
            except FeatureViewNotFoundException as e:
                raise StoreNotAppliedError(f"feature view {name!r} is not registered in {self.config.registry}",
                                           fix="run `g2rec features apply` first") from e
        return self._views[name]

    @property
    def backend(self) -> OnlineBackend:
        """Bulk reads and writes in Feast's online layout for the configured store."""
        if self._backend is None:
            self._backend = make_backend(self.repo_config)
        return self._backend

    @property
    def versions(self) -> VersionLog:
        """The version log in the metadata DB (config.metadata)."""
        if self._versions is None:
            self._versions = VersionLog(self.config.metadata)
        return self._versions

    def read(self, view_name: str, keys: Sequence[bytes], features: list[str]) -> list[dict[str, ValueProto] | None]:
        """Online rows of one view for serialized entity keys (features/encoding.py): per key,
        {feature: Value}, or None when the entity has no stored value for any of `features`."""
        if not len(keys):
            return []
        raw = self.backend.read(self.view(view_name), keys, features)
        return [{f: ValueProto.FromString(b) for f, b in row.items()} if row else None for row in raw]

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._versions is not None:
            self._versions.close()
            self._versions = None

    def __enter__(self) -> "FeatureRepo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def offline_schema(view: FeatureView) -> pa.Schema:
    """Arrow schema of a view's offline rows: its schema fields in order, then event_timestamp."""
    fields = []
    for f in list(view.entity_columns) + list(view.features):
        if f.dtype not in _ARROW_TYPES:
            raise TypeError(f"view {view.name!r} field {f.name!r}: no arrow type for {f.dtype}")
        fields.append(pa.field(f.name, _ARROW_TYPES[f.dtype]))
    fields.append(pa.field("event_timestamp", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)
