"""Feature views. Scanned by `feast apply` as top-level modules from inside features/, and
imported as features.feature_views by g2rec code, hence the two import forms below.

Versioned feature sets (profiles, prototypes) are double-buffered: rows are keyed by
(id, buffer_slot) and carry their version; version_pointer says which slot holds the current
version. The full protocol is in features/README.md.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Int64, String

if __package__:
    from .data_sources import (
        cluster_prototype_push,
        item_interest_profile_push,
        user_event_log,
        user_history_push,
        version_pointer_push,
    )
    from .entities import cluster, feature_set, item, user, buffer_slot
else:  # `feast apply` imports repo files as top-level modules
    from data_sources import (
        cluster_prototype_push,
        item_interest_profile_push,
        user_event_log,
        user_history_push,
        version_pointer_push,
    )
    from entities import cluster, feature_set, item, user, buffer_slot

NEVER_EXPIRES = timedelta(0)

item_interest_profile = FeatureView(
    name="item_interest_profile",
    entities=[item, buffer_slot],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="item_id", dtype=Int64),
        Field(name="buffer_slot", dtype=Int64),
        Field(name="clusters", dtype=Array(Int64), description="top-rho cluster ids, by weight descending"),
        Field(name="weights", dtype=Array(Float32), description="their weights, summing to 1"),
        Field(name="primary_cluster", dtype=Int64, description="clusters[0]"),
        Field(name="profile_version", dtype=Int64, description="version this row belongs to"),
    ],
    source=item_interest_profile_push,
    online=True,
    description="Item-interest profile (method spec section 3), one row per item and slot.",
)

cluster_prototype = FeatureView(
    name="cluster_prototype",
    entities=[cluster, buffer_slot],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="cluster_id", dtype=Int64),
        Field(name="buffer_slot", dtype=Int64),
        Field(name="vector", dtype=Array(Float32), description="prototype vector (d,)"),
        Field(name="prototype_version", dtype=Int64, description="version this row belongs to"),
        Field(name="profile_version", dtype=Int64, description="profile version whose cluster ids these are"),
    ],
    source=cluster_prototype_push,
    online=True,
    description="Interest prototype vector per cluster, once a model exists.",
)

version_pointer = FeatureView(
    name="version_pointer",
    entities=[feature_set],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="feature_set", dtype=String),
        Field(name="current_version", dtype=Int64),
        Field(name="current_slot", dtype=Int64),
        Field(name="current_width", dtype=Int64, description="rho for profiles, d for prototypes"),
        Field(name="previous_version", dtype=Int64, description="-1 once its slot is being rewritten"),
        Field(name="previous_slot", dtype=Int64),
        Field(name="previous_width", dtype=Int64),
        Field(name="published_at", dtype=Int64, description="unix seconds of the last switch"),
    ],
    source=version_pointer_push,
    online=True,
    description="Which version of each versioned feature set is current, and in which slot.",
)

user_recent_history = FeatureView(
    name="user_recent_history",
    entities=[user],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="item_ids", dtype=Array(Int64), description="recent item ids, oldest first"),
        Field(name="timestamps", dtype=Array(Int64), description="their event times, unix seconds"),
        Field(name="position", dtype=Int64, description="the user's events seen by the stream worker so far"),
    ],
    source=user_history_push,
    online=True,
    description="A user's most recent engagements, appended by the stream worker.",
)

user_engagement = FeatureView(
    name="user_engagement",
    entities=[user],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="user_id", dtype=Int64),
        Field(name="item_id", dtype=Int64, description="the item of the user's engagement"),
        Field(name="kafka_offset", dtype=Int64, description="its offset in its events-topic partition"),
    ],
    source=user_event_log,
    online=False,
    description=(
        "Users' engagements from the event log, offline only: get_historical_features gives each "
        "user's latest engagement at or before the query time; whole sequences come from "
        "streaming.eventlog.read_histories."
    ),
)
