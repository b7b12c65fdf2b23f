"""HTTP front of the scorer (FastAPI): near-real-time recommendations for one user, from a
history in the request or the user's recent history in the feature store."""

from __future__ import annotations

from typing import Callable

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.scorer import OnnxScorer

# user id -> the user's recent original item ids (oldest first), or None when the store has none.
HistorySource = Callable[[int], "np.ndarray | None"]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[int | str] | None = Field(None, min_length=1, description="original item ids, oldest first")
    user_id: int | None = Field(None, description="look the recent history up in the feature store")
    k: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def one_source(self) -> "RecommendRequest":
        if (self.history is None) == (self.user_id is None):
            raise ValueError("give exactly one of history or user_id")
        return self


class RecommendResponse(BaseModel):
    items: list[int | str]
    scores: list[float]


def make_app(scorer: OnnxScorer, item_ids: np.ndarray, user_history: HistorySource | None = None) -> FastAPI:
    index = {v: i for i, v in enumerate(item_ids.tolist()) if i > 0}
    app = FastAPI(title="g2rec serving")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "items": len(item_ids) - 1, "feature_store": user_history is not None}

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        history = req.history
        if req.user_id is not None:
            if user_history is None:
                raise HTTPException(400, "user_id lookups need the feature store (start with --features)")
            found = user_history(req.user_id)
            if found is None or len(found) == 0:
                raise HTTPException(404, f"user {req.user_id} has no recent history in the feature store")
            history = found.tolist()
        known = [index[i] for i in history if i in index]
        if not known:
            raise HTTPException(422, f"no known item in history (unknown: {history[:10]})")
        rec = scorer.recommend([np.array(known)], req.k)[0]
        return RecommendResponse(items=item_ids[rec.items].tolist(), scores=rec.scores.tolist())

    return app


def feature_store_histories(config) -> HistorySource:
    """A HistorySource over the Feast online store (features.lookup), one lookup per thread as
    the store requires; `config` is a features.config.StoreConfig."""
    import threading

    from features.lookup import FeatureLookup

    local = threading.local()

    def user_history(user_id: int) -> np.ndarray | None:
        if not hasattr(local, "lookup"):
            local.lookup = FeatureLookup.open(config)
        h = local.lookup.histories([user_id])
        return h.items[0] if h.found[0] else None

    return user_history
