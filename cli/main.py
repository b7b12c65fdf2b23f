"""The `g2rec` command. Subcommands live beside the component they drive and load lazily,
so `g2rec train` never imports Kafka and `g2rec stream` never imports torch's exporter."""

from __future__ import annotations

import importlib

import click

from cli.context import DATA_ROOT_KEY, DEBUG_KEY
from cli.errors import TranslatingGroup

# name -> ("module:attribute" of a click command, one line of help shown without importing it).
COMMANDS = {
    "demo": ("demo.cli:demo", "The streaming system end to end: Kafka, Feast, training, serving, a report."),
    "train": ("training.cli:train", "Train a model and write a run directory."),
    "train-service": ("training.cli:train_service", "Retrain on every new edge snapshot: cluster, publish, train, register."),
    "eval": ("training.cli:evaluate", "Re-evaluate a run directory on validation and test."),
    "replay": ("streaming.cli:replay", "Produce a dataset's events to Kafka, keyed by user."),
    "stream": ("streaming.cli:stream", "Run the stream worker: events -> counts -> edge snapshots."),
    "features": ("features.cli:features", "The Feast feature store: apply, publish, look up, serve."),
    "serve": ("serving.cli:serve", "HTTP recommendations from a trained model."),
    "score": ("serving.cli:score", "Batch scoring of users from a file to Parquet."),
}

# `g2rec bench NAME`: each benchmark module exposes a click command.
BENCHMARKS = {
    "quality": ("bench.quality:command", "Recommendation quality, items-only vs G2Rec, several seeds."),
    "ablation": ("bench.quality:ablation", "G2Rec variants side by side, one seed each."),
    "tune": ("bench.quality:tune", "Model variants on validation only (the test split unread)."),
    "epoch-cost": ("bench.epoch_cost:command", "CPU seconds per epoch and validation, items-only vs G2Rec."),
    "cluster": ("bench.cluster:command", "Soft modularity clustering vs Leiden and Louvain."),
    "stream": ("bench.stream:command", "Stream worker throughput, freshness and exactness."),
    "features": ("bench.features:command", "Feature store publish and lookup speed."),
    "serve": ("bench.serve:command", "Scoring, HTTP latency under load, hot swaps, batch scoring."),
    "train-service": ("bench.train_service:command", "Training service cycles: warm vs cold, fine-tune vs retrain."),
}


def _load(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(TranslatingGroup):
    def __init__(self, *args, table: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.table = table

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.table) | set(self.commands))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help from the table: importing every component just to print it would be slow.
        with formatter.section("Commands"):
            rows = [(name, self.table[name][1] if name in self.table else self.commands[name].get_short_help_str())
                    for name in self.list_commands(ctx)]
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.table:
            return None
        try:
            return _load(self.table[name][0])
        except (ImportError, AttributeError) as e:
            raise click.ClickException(f"command {name!r} is not available: {e}") from e


@click.group(cls=LazyGroup, table=COMMANDS)
@click.option("--debug", is_flag=True, help="show the traceback of an error (also G2REC_DEBUG=1)")
@click.option("--data-root", envvar="G2REC_DATA", type=click.Path(file_okay=False), default=None,
              help="folder of the public datasets [default: $G2REC_DATA, else ../shared/data, else ./data]")
@click.pass_context
def cli(ctx: click.Context, debug: bool, data_root: str | None) -> None:
    """g2rec: streaming generative recommender (G2Rec)."""
    ctx.meta[DEBUG_KEY] = debug
    ctx.meta[DATA_ROOT_KEY] = data_root


@cli.group(cls=LazyGroup, table=BENCHMARKS, name="bench", short_help="Run a benchmark; results go to bench/results/.")
def bench() -> None:
    """Benchmarks; each writes bench/results/NAME*.json."""


if __name__ == "__main__":
    cli()
