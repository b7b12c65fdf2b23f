"""Serving: the run directory's model behind onnxruntime (run_dir, scorer), the one serving rule
for unknown items, long histories, exclusions, k and the popularity fallback (recommender), the
HTTP service (http, schemas, middleware, metrics) and batch scoring (batch); cli holds the
entry points."""
