"""The run report: one self-contained HTML page (no network: charts are inline PNGs) that a
person can open after `make demo` or any training run.

Sections, each present even when its data is missing (then it says so): metrics, training curves,
cluster sizes, interest changes between profile versions, top interests with example items,
live-update timing, and the wall time of each phase.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("metrics", "curves", "clusters", "changes", "interests", "live", "phases")


@dataclass(frozen=True)
class InterestSummary:
    """One interest cluster: its id, how many items have it as primary, a few example item ids."""

    cluster: int
    size: int
    examples: list[str]


@dataclass(frozen=True)
class ProfileChange:
    """Between two profile versions: the share of items (present in both) whose primary interest
    changed, and how many items the newer version has."""

    from_version: int
    to_version: int
    changed_share: float
    items: int


@dataclass(frozen=True)
class ReportData:
    """What the report shows.

    metrics: row label -> metric name -> value (e.g. "g2rec (test)" -> {"ndcg@10": 0.05}).
    curves:  model label -> [{"epoch", "loss", "valid_ndcg@10"}, ...] (a run's metrics["curve"]).
    cluster_sizes: (K,) items per primary interest.
    live_update_s: seconds from a fresh event to a changed recommendation, if measured.
    phases: phase name -> wall seconds.
    """

    title: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[dict]] = field(default_factory=dict)
    cluster_sizes: list[int] = field(default_factory=list)
    changes: list[ProfileChange] = field(default_factory=list)
    interests: list[InterestSummary] = field(default_factory=list)
    live_update_s: float | None = None
    phases: dict[str, float] = field(default_factory=dict)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves_chart(curves: dict[str, list[dict]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ndcg) = plt.subplots(1, 2, figsize=(10, 3.2))
    for label, points in curves.items():
        epochs = [p["epoch"] for p in points]
        ax_loss.plot(epochs, [p["loss"] for p in points], marker=".", label=label)
        ax_ndcg.plot(epochs, [p["valid_ndcg@10"] for p in points], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_ndcg.set(xlabel="epoch", ylabel="validation NDCG@10")
    ax_ndcg.legend()
    out = _png(fig)
    plt.close(fig)
    return out


def _sizes_chart(sizes: list[int]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3))
    ordered = sorted(sizes, reverse=True)
    ax.bar(range(len(ordered)), ordered, width=1.0)
    ax.set(xlabel="interest (largest first)", ylabel="items (primary)", yscale="log" if ordered and ordered[0] > 0 else "linear")
    out = _png(fig)
    plt.close(fig)
    return out


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, body: str | None, missing: str) -> str:
    inner = body if body else f'<p class="missing">{html.escape(missing)}</p>'
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{inner}</section>'


def render_report(data: ReportData) -> str:
    """The report as one HTML document (str)."""
    names = sorted({m for row in data.metrics.values() for m in row}, key=lambda s: (s.split("@")[0], int(s.split("@")[1]) if "@" in s else 0))
    metrics = _table(["model", *names], [[label, *(f"{row.get(m, float('nan')):.4f}" for m in names)]
                                         for label, row in data.metrics.items()]) if data.metrics else None
    sizes = data.cluster_sizes
    clusters = None
    if sizes:
        nonempty = [s for s in sizes if s > 0]
        clusters = (f"<p>{len(sizes)} interests, {len(nonempty)} with items; largest {max(sizes)}, "
                    f"median of non-empty {sorted(nonempty)[len(nonempty) // 2] if nonempty else 0}.</p>"
                    + _sizes_chart(sizes))
    changes = _table(["from version", "to version", "items", "changed primary interest"],
                     [[str(c.from_version), str(c.to_version), str(c.items), f"{c.changed_share:.1%}"]
                      for c in data.changes]) if data.changes else None
    interests = _table(["interest", "items", "example items"],
                       [[str(i.cluster), str(i.size), ", ".join(i.examples)] for i in data.interests]) if data.interests else None
    live = (f"<p class=\"figure\">{data.live_update_s:.2f} s</p><p>from producing new events for a user on Kafka "
            "until that user's recommendations changed.</p>") if data.live_update_s is not None else None
    phases = _table(["phase", "seconds"], [[k, f"{v:.1f}"] for k, v in data.phases.items()]
                    + [["total", f"{sum(data.phases.values()):.1f}"]]) if data.phases else None
    parts = [
        _section("metrics", "Metrics (leave-one-out, full ranking, history excluded)", metrics, "No metrics recorded."),
        _section("curves", "Training curves", _curves_chart(data.curves) if data.curves else None, "No training curve recorded."),
        _section("clusters", "Interest sizes", clusters, "No clustering in this run (items-only model)."),
        _section("changes", "Interest changes between profile versions", changes, "Only one profile version so far."),
        _section("interests", "Top interests", interests, "No interests to show."),
        _section("live", "Live update", live, "Not measured in this run."),
        _section("phases", "Wall time per phase", phases, "No phases recorded."),
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
table {{ border-collapse: collapse; font-variant-numeric: tabular-nums; }}
td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.missing {{ color: #888; font-style: italic; }} .figure {{ font-size: 2em; margin: .2em 0; }}
img {{ max-width: 100%; }}
</style></head>
<body><h1>{html.escape(data.title)}</h1>
{''.join(parts)}
</body></html>
"""


def write_report(data: ReportData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data), encoding="utf-8")
    return path


def report_from_run(run_dir: Path, title: str | None = None, n_interests: int = 10, n_examples: int = 5) -> ReportData:
    """A training run directory (training/pipeline.py's layout) -> its report data."""
    import json

    import numpy as np

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    mode = json.loads((run_dir / "config.json").read_text())["model"]["mode"]
    rows = {f"{mode} ({stage})": metrics[stage]["masked"] for stage in ("valid", "test") if stage in metrics}
    interests: list[InterestSummary] = []
    if (run_dir / "profiles.npz").is_file():
        with np.load(run_dir / "profiles.npz", allow_pickle=False) as z:
            primary, item_ids = z["clusters"][1:, 0], z["item_ids"][1:]
        sizes = np.bincount(primary, minlength=int(max(primary.max() + 1, len(metrics.get("cluster_sizes", [])))))
        for k in np.argsort(-sizes, kind="stable")[:n_interests]:
            examples = item_ids[primary == k][:n_examples]
            interests.append(InterestSummary(int(k), int(sizes[k]), [str(i) for i in examples.tolist()]))
    return ReportData(
        title=title or f"g2rec run {run_dir.name}",
        metrics=rows,
        curves={mode: metrics["curve"]} if metrics.get("curve") else {},
        cluster_sizes=list(metrics.get("cluster_sizes", [])),
        interests=interests,
        phases={k: float(metrics[k]) for k in ("graph_seconds", "cluster_seconds", "train_seconds") if k in metrics},
    )
