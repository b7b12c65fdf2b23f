"""`g2rec train`, `g2rec eval`, `g2rec demo`: entry points of the offline training pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.context import data_root
from demo.report import report_from_run, write_report
from g2rec.config import override
from g2rec.errors import ConfigError
from g2rec.metrics import METRIC_NAMES
from training.pipeline import PipelineConfig, load_run, run
from training.presets import preset


def metrics_table(rows: dict[str, dict]) -> str:
    """rows: label -> {"masked": {...}, "unmasked": {...}} -> a fixed-width text table."""
    head = f"{'model':<24}" + "".join(f"{m:>11}" for m in METRIC_NAMES)
    lines = [head, "-" * len(head)]
    for label, m in rows.items():
        for variant in ("masked", "unmasked"):
            name = label if variant == "masked" else "  (history not excluded)"
            lines.append(f"{name:<24}" + "".join(f"{m[variant][k]:>11.4f}" for k in METRIC_NAMES))
    return "\n".join(lines)


def device_flags(device: str | None) -> dict:
    """Pipeline overrides that put training and clustering on `device` (None: as configured)."""
    return {} if device is None else {"train": {"device": device}, "cluster": {"device": device}}


def _config(dataset: str, dataset_path: str | None, fmt: str | None, model: str, config: str | None,
            epochs: int | None, seed: int, minutes: float | None, device: str | None = None) -> PipelineConfig:
    """The preset, then the JSON overrides file, then the flags: one deep merge (g2rec.config)."""
    cfg = preset(dataset, model, data_root())
    if config:
        cfg = override(cfg, _read_json(Path(config)), config)
    flags = {"data": {"path": dataset_path, "fmt": fmt}, **device_flags(device)}
    flags["train"] = {**flags.get("train", {}), "seed": seed}
    if epochs is not None:
        flags["train"]["epochs"] = epochs
    if minutes is not None:
        flags["train"]["max_minutes"] = minutes
    return override(cfg, flags, "command-line flags")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), f"invalid JSON: {e}") from e


dataset_options = [
    click.option("--dataset", default="beauty", show_default=True, help="dataset name (beauty, ml-100k, lastfm, ...)"),
    click.option("--dataset-path", type=click.Path(), default=None, help="load this file instead of a named dataset"),
    click.option("--format", "fmt", type=click.Choice(["s3rec", "movielens", "csv"]), default=None),
]


def with_dataset(f):
    for opt in reversed(dataset_options):
        f = opt(f)
    return f


def with_train_options(f):
    """The options of `g2rec train`, shared with its data-parallel launcher (training/ddp.py)."""
    options = [
        click.option("--model", type=click.Choice(["items", "g2rec"]), default="items", show_default=True),
        click.option("--out", type=click.Path(file_okay=False), required=True, help="run directory to write"),
        click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None, help="JSON overrides"),
        click.option("--epochs", type=int, default=None),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--minutes", type=float, default=None, help="wall-clock cap on training"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="training and clustering device (default: the config's, auto = CUDA when present)"),
    ]
    for opt in reversed(options):
        f = opt(f)
    return with_dataset(f)


@click.command()
@with_train_options
def train(dataset, dataset_path, fmt, model, out, config, epochs, seed, minutes, device):
    """Train a model and write a run directory (model, profiles, metrics). Data-parallel over
    several processes: `torchrun --nproc_per_node N -m training.ddp ...` (training/ddp.py)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = _config(dataset, dataset_path, fmt, model, config, epochs, seed, minutes, device)
    res = run(cfg, Path(out))
    click.echo(metrics_table({f"{model} (test)": res.metrics["test"]}))
    report = write_report(report_from_run(Path(out)), Path(out) / "report.html")
    click.echo(f"best epoch {res.metrics['best_epoch']}, {res.metrics['train_seconds']:.0f}s training -> {out} (report: {report})")


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def evaluate(run_dir):
    """Re-evaluate a run directory on its dataset's validation and test splits."""
    from g2rec.metrics import loo_split
    from g2rec.train import evaluate as eval_split

    cfg, model = load_run(Path(run_dir))
    split = loo_split(cfg.data.load())
    rows = {f"{model.cfg.mode} ({stage})": eval_split(model, split, stage) for stage in ("valid", "test")}
    click.echo(metrics_table(rows))


FAULT_ENV = "G2REC_TRAIN_FAULT"  # test-only: SIGKILL the service in the middle of this stage


@click.command("train-service")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON ServiceConfig overrides (nested pipeline, finetune, registry, features)")
@click.option("--dataset", default="ml-100k", show_default=True, help="preset of model, training and clustering")
@click.option("--model", type=click.Choice(["items", "g2rec"]), default="g2rec", show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False), default=None, help="cycle folders and the journal")
@click.option("--event-log", type=click.Path(file_okay=False), default=None, help="the worker's Parquet event log")
@click.option("--store-url", default=None, help="the stream state store (its snapshot table is read at start)")
@click.option("--bootstrap", default=None, help="Kafka bootstrap ('' : no Kafka); $G2REC_KAFKA")
@click.option("--topic", default=None, help="events topic; announcements come on TOPIC-snapshots")
@click.option("--tracking-url", default=None, help="MLflow backend store URL (default sqlite under mlruns/)")
@click.option("--artifacts", default=None, help="MLflow artifact folder for a new experiment")
@click.option("--full-retrain-every", type=int, default=None, help="every Nth trained cycle retrains from scratch")
@click.option("--full-retrain-now", is_flag=True, help="the next cycle retrains from scratch")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
@click.option("--once", is_flag=True, help="handle the pending snapshots, then exit")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="training, fine-tuning and clustering device (default: the config's, auto = CUDA when present)")
def train_service(config_path, dataset, model, once, full_retrain_now, device, **flags):
    """Long-running: one recluster -> publish -> train -> export -> register -> promote cycle per snapshot."""
    import logging
    import os

    from features.config import StoreConfig
    from g2rec.config import from_mapping, to_mapping
    from training.service import FULL_RETRAIN_REQUEST, ServiceConfig, TrainService, finetune_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("mlflow", "alembic", "feast", "kafka", "onnxscript", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pipeline = _config(dataset, None, None, model, None, None, 0, None)
    base = {"pipeline": to_mapping(pipeline), "finetune": to_mapping(finetune_config(pipeline.train)),
            "features": to_mapping(StoreConfig.from_env()),
            "bootstrap": os.environ.get("G2REC_KAFKA", "127.0.0.1:9092")}
    base["pipeline"]["train"]["progress"] = False
    cfg = from_mapping(ServiceConfig, base, "train-service defaults")
    if config_path:
        cfg = override(cfg, _read_json(Path(config_path)), config_path)
    registry = {k: v for k, v in (("tracking_url", flags.pop("tracking_url")), ("artifacts", flags.pop("artifacts")))
                if v is not None}
    over = {**{k: v for k, v in flags.items() if v is not None}, "registry": registry}
    if device is not None:
        over.update(pipeline=device_flags(device), finetune={"device": device})
    if os.environ.get(FAULT_ENV):
        over["fault_stage"] = os.environ[FAULT_ENV]
    cfg = override(cfg, over, "command-line flags")
    service = TrainService(cfg)
    if full_retrain_now:
        (Path(cfg.work_dir) / FULL_RETRAIN_REQUEST).touch()
    try:
        if once:
            service.scan_store()
            service.poll_kafka(cfg.poll_s)
            service.run_pending()
        else:
            service.run_forever()
    finally:
        service.close()
