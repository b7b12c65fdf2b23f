"""HTTP front of the scorer (FastAPI): near-real-time recommendations for one or many users."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from serving.scorer import OnnxScorer


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[int | str] = Field(min_length=1, description="original item ids, oldest first")
    k: int = Field(10, ge=1, le=1000)


class RecommendResponse(BaseModel):
    items: list[int | str]
    scores: list[float]


def make_app(scorer: OnnxScorer, item_ids: np.ndarray) -> FastAPI:
    index = {v: i for i, v in enumerate(item_ids.tolist()) if i > 0}
    app = FastAPI(title="g2rec serving")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "items": len(item_ids) - 1}

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        unknown = [i for i in req.history if i not in index]
        if len(unknown) == len(req.history):
            raise HTTPException(422, f"no known item in history (unknown: {unknown[:10]})")
        hist = np.array([index[i] for i in req.history if i in index])
        rec = scorer.recommend([hist], req.k)[0]
        return RecommendResponse(items=item_ids[rec.items].tolist(), scores=rec.scores.tolist())

    return app
