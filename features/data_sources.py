"""Data sources. Streamed and published data arrive through PushSources; each has a parquet
FileSource behind it for the file offline store (paths relative to the repo root, under data/).
The stream worker's event log is a FileSource of its own: the offline source of user histories.
"""

from feast import FileSource, PushSource

item_interest_profile_file = FileSource(
    name="item_interest_profile_file",
    path="data/offline/item_interest_profile.parquet",
    timestamp_field="event_timestamp",
    description="Every published profile version, one row per (item, version).",
)
item_interest_profile_push = PushSource(
    name="item_interest_profile_push",
    batch_source=item_interest_profile_file,
    description="Profile rows written by features/publish.py (or pushed by hand).",
)

cluster_prototype_file = FileSource(
    name="cluster_prototype_file",
    path="data/offline/cluster_prototype.parquet",
    timestamp_field="event_timestamp",
)
cluster_prototype_push = PushSource(name="cluster_prototype_push", batch_source=cluster_prototype_file)

version_pointer_file = FileSource(
    name="version_pointer_file",
    path="data/offline/version_pointer.parquet",
    timestamp_field="event_timestamp",
)
version_pointer_push = PushSource(name="version_pointer_push", batch_source=version_pointer_file)

user_history_file = FileSource(
    name="user_history_file",
    path="data/offline/user_recent_history.parquet",
    timestamp_field="event_timestamp",
)
user_history_push = PushSource(
    name="user_history_push",
    batch_source=user_history_file,
    description="Recent histories written by the stream worker's sink (features/sink.py).",
)

user_event_log = FileSource(
    name="user_event_log",
    path="data/eventlog",
    timestamp_field="event_timestamp",
    description=(
        "The stream worker's Parquet event log (streaming/eventlog.py): one row per committed event "
        "(user_id, item_id, event_timestamp, kafka_partition, kafka_offset), a dataset partitioned by "
        "date and Kafka partition. Run the worker with event_log_dir = <features root>/data/eventlog."
    ),
)
