"""Feature services other services ask for by name (e.g. over `feast serve`)."""

from feast import FeatureService

if __package__:
    from .feature_views import cluster_prototype, item_interest_profile, user_recent_history, version_pointer
else:  # `feast apply` imports repo files as top-level modules
    from feature_views import cluster_prototype, item_interest_profile, user_recent_history, version_pointer

scoring = FeatureService(
    name="scoring",
    features=[user_recent_history, item_interest_profile],
    description="What the scorer reads per request: the user's recent history and item profiles.",
)

interest_profiles = FeatureService(
    name="interest_profiles",
    features=[item_interest_profile],
    description="Item-interest profiles alone (pass item_id and the current buffer_slot).",
)

interest_prototypes = FeatureService(name="interest_prototypes", features=[cluster_prototype])

version_pointers = FeatureService(
    name="version_pointers",
    features=[version_pointer],
    description="Read first: the current version and slot of each versioned feature set.",
)
