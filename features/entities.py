"""Entities of the g2rec feature repo. Scanned by `feast apply`; imported by features.* code.

Ids are the original (catalogue) ids as int64, not g2rec's dense 1..N indices: other services
know items and users by those ids.
"""

from feast import Entity, ValueType

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="An item, by its original int64 id.",
)

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A user, by its original int64 id.",
)

cluster = Entity(
    name="cluster",
    join_keys=["cluster_id"],
    value_type=ValueType.INT64,
    description="An interest cluster id (0..K-1) of one profile version.",
)

# Named so it sorts before "cluster_id" and "item_id": Feast orders a composite key's values by
# join key name, so the slot leads the stored key and each slot's rows stay contiguous in the
# SQL stores' primary-key index (publishing into one slot appends instead of splitting pages).
buffer_slot = Entity(
    name="buffer_slot",
    join_keys=["buffer_slot"],
    value_type=ValueType.INT64,
    description=(
        "Double-buffer slot (0 or 1) that holds one version of a versioned feature set. "
        "Read the current slot from the version_pointer view; never guess it."
    ),
)

feature_set = Entity(
    name="feature_set",
    join_keys=["feature_set"],
    value_type=ValueType.STRING,
    description="A versioned feature set: 'item_interest_profile' or 'cluster_prototype'.",
)
