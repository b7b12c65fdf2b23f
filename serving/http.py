"""HTTP front of the recommender (FastAPI; OpenAPI at /docs): near-real-time recommendations for
one user (POST /recommend) or many (POST /recommend/batch), from a history in the request or the
user's recent history in the feature store, by the rule of serving.recommender (unknown items
ignored and counted, histories cut to the most recent max_len, popularity fallback, at most k).

Bad input is a 4xx whose `message` names the field, never a 5xx and never an echo of the input:
ids and k are strict integers in range (item ids strict strings for string catalogues), bodies are
capped in size (413) and must arrive within a deadline (408). GET /health (alive), /ready (the
model answers), /metrics (Prometheus). With a token configured, the POST endpoints want
`Authorization: Bearer TOKEN`.
"""

import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from g2rec.errors import UnavailableError
from serving.handle import ModelHandle
from serving.metrics import Metrics
from serving.middleware import BodyLimit, RequestMetrics
from serving.recommender import Recommender
from serving.schemas import BatchResponse, Limits, Problem, Recommendation, request_models

log = logging.getLogger("g2rec.serving")

# user id -> the user's recent original item ids (oldest first), or None when the store has none.
HistorySource = Callable[[int], "np.ndarray | None"]

MAX_LOC_CHARS = 64  # an unknown field's name is echoed at most this long


@dataclass(frozen=True)
class HttpConfig:
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0  # the whole body must arrive within this
    token: str | None = None  # bearer token the POST endpoints require; None: open


def _field(loc) -> str:
    return ".".join(str(p)[:MAX_LOC_CHARS] for p in loc)


def validation_problem(exc: RequestValidationError) -> dict:
    """pydantic errors -> {message, detail}, without the offending input (it may be huge or not
    JSON-encodable, like NaN)."""
    detail = [{"loc": [str(p)[:MAX_LOC_CHARS] for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
              for e in exc.errors()[:20]]
    message = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in detail[:5])
    return {"message": message, "detail": detail}


def problem(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "detail": message}, status_code=status, headers=headers)


def make_app(model: ModelHandle | Recommender, user_history: HistorySource | None = None,
             config: HttpConfig = HttpConfig()) -> FastAPI:
    """The app over `model`: a fixed Recommender, or a ModelHandle that may swap while serving
    (each request answers from the model it read first, and names its versions)."""
    handle = model if isinstance(model, ModelHandle) else ModelHandle(model)
    first = handle.get()
    RecommendRequest, BatchRequest = request_models(first.item_type, config.limits)
    metrics = Metrics(first)
    handle.on_swap(metrics.set_model)
    app = FastAPI(title="g2rec serving", version=first.version,
                  responses={422: {"model": Problem}, 413: {"model": Problem}, 408: {"model": Problem}})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_problem(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own 400s and 404s are Starlette's
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if exc.status_code != 400 or "parsing the body" not in str(exc.detail) \
            else "body: not valid JSON in UTF-8 (or nested too deeply)"
        return problem(exc.status_code, message, exc.headers)

    @app.exception_handler(UnavailableError)  # the feature store is down: the client may retry
    async def unavailable(request: Request, exc: UnavailableError) -> JSONResponse:
        return problem(503, str(exc))

    bearer = HTTPBearer(auto_error=False)

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "authorization: a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    def histories_of(queries) -> list[list]:
        out = []
        for q in queries:
            if q.user_id is None:
                out.append(q.history)
                continue
            if user_history is None:
                raise HTTPException(400, "user_id: lookups need the feature store (the server runs without it)")
            found = user_history(q.user_id)
            out.append([] if found is None else found.tolist())
        return out

    def answer(recommender: Recommender, queries, k: int) -> list[Recommendation]:
        histories = histories_of(queries)
        ranked = recommender.recommend(histories, k, [q.exclude for q in queries])
        metrics.fallbacks.inc(sum(r.fallback for r in ranked))
        metrics.unknown_items.inc(sum(r.unknown_items for r in ranked))
        return [Recommendation(user_id=q.user_id, items=r.items, scores=r.scores, history_items=len(h),
                               used_items=r.used_items, unknown_items=r.unknown_items, fallback=r.fallback,
                               model_version=recommender.version, profile_version=recommender.profile_version)
                for q, h, r in zip(queries, histories, ranked)]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict:
        recommender = handle.get()
        recommender.scorer.scores([np.array([1])])  # the session answers
        return {"status": "ready", "model_version": recommender.version,
                "profile_version": recommender.profile_version, "items": recommender.n_items,
                "max_len": recommender.max_len, "feature_store": user_history is not None}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/recommend", response_model=Recommendation, dependencies=[Depends(authorized)])
    def recommend(req: RecommendRequest) -> Recommendation:
        return answer(handle.get(), [req], req.k)[0]

    @app.post("/recommend/batch", response_model=BatchResponse, dependencies=[Depends(authorized)])
    def recommend_batch(req: BatchRequest) -> BatchResponse:
        recommender = handle.get()
        return BatchResponse(model_version=recommender.version, profile_version=recommender.profile_version,
                             results=answer(recommender, req.users, req.k))

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(RequestMetrics, metrics=metrics,
                       endpoints={"/recommend", "/recommend/batch", "/health", "/ready", "/metrics"})
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
