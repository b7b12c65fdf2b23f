"""The HTTP service's typed records (pydantic, strict): what a request may hold and what a
response promises. Request models are built per catalogue and limits (`request_models`), so the
OpenAPI schema at /docs states the real item-id type and bounds."""

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

INT64 = (-(2**63), 2**63 - 1)
MAX_STR_ID = 256  # characters of a string item id


@dataclass(frozen=True)
class Limits:
    """Request bounds; part of the service's config."""

    max_k: int = 1000
    max_batch: int = 100  # users per /recommend/batch call
    max_history: int = 10_000  # items per history or exclude list


def item_id_type(kind: type):
    """int catalogues take strict int64 ids (not true, 1.0 or "1"); str catalogues strict strings."""
    if kind is int:
        return Annotated[StrictInt, Field(ge=INT64[0], le=INT64[1])]
    return Annotated[StrictStr, Field(min_length=1, max_length=MAX_STR_ID)]


def request_models(kind: type, limits: Limits):
    """-> (RecommendRequest, BatchRequest) for item ids of type `kind` (int or str)."""
    Item = item_id_type(kind)
    K = Annotated[StrictInt, Field(ge=1, le=limits.max_k, description="how many items to return (at most)")]

    class UserQuery(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[Item] | None = Field(None, min_length=1, max_length=limits.max_history,
                                           description="original item ids, oldest first")
        user_id: Annotated[StrictInt, Field(ge=0, le=INT64[1])] | None = Field(
            None, description="look the user's recent history up in the feature store")
        exclude: list[Item] = Field([], max_length=limits.max_history, description="items never to return")

        @model_validator(mode="after")
        def one_source(self):
            if (self.history is None) == (self.user_id is None):
                raise ValueError("give exactly one of history or user_id")
            return self

    class RecommendRequest(UserQuery):
        k: K = 10

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: list[UserQuery] = Field(min_length=1, max_length=limits.max_batch)
        k: K = 10

    return RecommendRequest, BatchRequest


class Recommendation(BaseModel):
    user_id: int | None = None
    items: list[int | str] = Field(description="original item ids, best first; at most k")
    scores: list[float] = Field(description="log-probabilities (fallback: log popularity shares)")
    history_items: int = Field(description="items in the history answered from, known or not: the request's, or "
                                           "the user's recent history in the feature store")
    used_items: int = Field(description="history items the model scored (the most recent max_len known ones)")
    unknown_items: int = Field(description="history items not in the catalogue, ignored")
    fallback: bool = Field(description="no known history item: ranked by training popularity")
    model_version: str = Field(description="the model that answered: the first 12 hex digits of its ONNX sha256")
    profile_version: str | None = Field(description="the interest profiles inside that model (None: items-only)")


class BatchResponse(BaseModel):
    model_version: str
    profile_version: str | None
    results: list[Recommendation]


class Problem(BaseModel):
    """Every 4xx: `message` names the field (e.g. "body.k: ..."); the input is never echoed."""

    message: str
    detail: list[dict] | str
