"""`g2rec demo`: the streaming system end to end on embedded defaults (demo/run.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command()
@click.option("--dataset", default="beauty-ts", show_default=True,
              help="a timestamped dataset; the synthetic generator stands in when it is absent")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder [default: runs/demo-TIME]")
@click.option("--train-minutes", type=float, default=4.0, show_default=True, help="budget of the first (full) training")
@click.option("--finetune-minutes", type=float, default=1.5, show_default=True, help="budget of the second cycle")
@click.option("--first-share", type=float, default=0.8, show_default=True,
              help="share of the events (time order) replayed before the first snapshot")
@click.option("--bench-json", type=click.Path(dir_okay=False), default=None,
              help="also write the timings here (e.g. bench/results/demo.json)")
def demo(dataset, out, train_minutes, finetune_minutes, first_share, bench_json):
    """Events through Kafka into the graph, interests into Feast, a model trained, registered and
    served, a fresh event changing a user's recommendations, and a hot swap; then a report."""
    import warnings

    from cli.context import data_root
    from demo.run import DemoConfig, run_demo

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # third-party noise in a demo

    out = out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = DemoConfig(out=out, dataset=dataset, data_root=data_root(), train_minutes=train_minutes,
                     finetune_minutes=finetune_minutes, first_share=first_share)
    result = run_demo(cfg)
    summary = result.to_dict()
    click.echo(json.dumps({k: summary[k] for k in ("wall_s", "live_update_s", "hot_swap_ok", "processes_left")}))
    if bench_json:
        Path(bench_json).write_text(json.dumps(summary, indent=2) + "\n")
