"""The `g2rec` command. Subcommands live beside the component they drive and load lazily,
so `g2rec train` never imports Kafka and `g2rec stream` never imports torch's exporter."""

from __future__ import annotations

import importlib

import click

from cli.context import DATA_ROOT_KEY, DEBUG_KEY
from cli.errors import TranslatingGroup

# name -> "module:attribute" of a click command.
COMMANDS = {
    "demo": "training.cli:demo",
    "train": "training.cli:train",
    "train-service": "training.cli:train_service",
    "eval": "training.cli:evaluate",
    "replay": "streaming.cli:replay",
    "stream": "streaming.cli:stream",
    "features": "features.cli:features",
    "serve": "serving.cli:serve",
    "score": "serving.cli:score",
}

# `g2rec bench NAME`: each benchmark module exposes a click command called `command`.
BENCHMARKS = {
    "quality": "bench.quality:command",
    "ablation": "bench.quality:ablation",
    "cluster": "bench.cluster:command",
    "stream": "bench.stream:command",
    "features": "bench.features:command",
    "train-service": "bench.train_service:command",
}


def _load(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(TranslatingGroup):
    def __init__(self, *args, table: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.table = table

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.table) | set(self.commands))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing names only: importing every component just to print help would be slow.
        with formatter.section("Commands"):
            formatter.write_dl([(name, self.table.get(name, "")) for name in self.list_commands(ctx)])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.table:
            return None
        try:
            return _load(self.table[name])
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


@cli.group(cls=LazyGroup, table=BENCHMARKS, name="bench")
def bench() -> None:
    """Benchmarks; each writes bench/results/NAME*.json."""


if __name__ == "__main__":
    cli()
