"""`g2rec bench epoch-cost`: CPU seconds of a training epoch and of a validation pass, items-only
and G2Rec side by side, per dataset -> bench/results/epoch-cost.json.

Both models are built from their presets and train on the same batches (same windows, same
order) in one process on one thread, alternating for `--rounds` rounds (the minimum of each is
reported: the least disturbed by other jobs on a shared machine). Times are this process's CPU
time, so other jobs inflate them only through shared caches. G2Rec's interest profiles are random
with the preset's K and rho (an epoch's cost does not depend on their values); the models are
untrained (the cost does not depend on the weights either).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from bench.quality import RESULTS, hardware
from cli.context import data_root
from g2rec.model import G2RecModel
from g2rec.metrics import loo_split
from g2rec.train import data_parallel, length_batches, mean_targets, train_epoch, training_sequences, validate
from training.presets import preset


def _model(dataset: str, mode: str, n_items: int, seed: int) -> G2RecModel:
    """The preset's model for `mode`; g2rec with random profiles of the preset's K and rho."""
    cfg = preset(dataset, mode, data_root())
    k, rho = cfg.cluster.n_clusters, cfg.cluster.rho
    mcfg = replace(cfg.model, n_items=n_items, **({"n_clusters": k, "rho": rho} if mode == "g2rec" else {}))
    torch.manual_seed(seed)
    model = G2RecModel(mcfg)
    if mode == "g2rec":
        g = torch.Generator().manual_seed(seed)
        weights = torch.softmax(torch.randn(n_items + 1, rho, generator=g), -1)
        weights[0] = 0
        model.set_profiles(torch.randint(0, k, (n_items + 1, rho), generator=g), weights)
    return model


def epoch_cost(dataset: str, rounds: int) -> dict:
    """{mode: {train_epoch_cpu_s, validate_cpu_s, per_epoch_cpu_s (validation amortised over
    eval_every), batches}} and their g2rec / items ratios."""
    data = preset(dataset, "items", data_root()).data.load()
    split = loo_split(data)
    out: dict = {}
    for r in range(rounds):
        for mode in ("items", "g2rec"):
            cfg = preset(dataset, mode, data_root())
            model = _model(dataset, mode, data.n_items, seed=r)
            seqs = training_sequences(split.train, model.cfg.max_len, model.cfg.context_len)
            batches = list(length_batches(seqs, cfg.train.batch_size, np.random.default_rng(r), model.cfg.max_len + 1))
            per_batch = mean_targets(seqs, model.cfg.max_len, cfg.train.batch_size)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
            params = list(model.parameters())
            avg = [p.detach().clone() for p in params]

            def average() -> None:
                with torch.no_grad():
                    torch._foreach_lerp_(avg, params, 1.0 - cfg.train.ema)

            model.train()
            t0 = time.process_time()
            train_epoch(data_parallel(model), opt, batches, per_batch if cfg.train.target_weighting else None,
                        on_step=average if cfg.train.ema > 0 else None)
            t1 = time.process_time()
            validate(model, split)
            t2 = time.process_time()
            prev = out.get(mode, {})
            out[mode] = {"train_epoch_cpu_s": min(t1 - t0, prev.get("train_epoch_cpu_s", np.inf)),
                         "validate_cpu_s": min(t2 - t1, prev.get("validate_cpu_s", np.inf)),
                         "eval_every": cfg.train.eval_every, "batches": len(batches)}
    for m in out.values():
        m["per_epoch_cpu_s"] = m["train_epoch_cpu_s"] + m["validate_cpu_s"] / m["eval_every"]
    out["ratio"] = {k: out["g2rec"][k] / out["items"][k] for k in ("train_epoch_cpu_s", "validate_cpu_s", "per_epoch_cpu_s")}
    return out


@click.command("epoch-cost")
@click.option("--datasets", default="beauty,lastfm,ml-100k", show_default=True)
@click.option("--rounds", type=int, default=2, show_default=True, help="alternating rounds; the minimum is kept")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "epoch-cost.json")
def command(datasets: str, rounds: int, out: Path) -> None:
    """CPU seconds per epoch and per validation pass, items-only vs G2Rec, same batches."""
    import os

    torch.set_num_threads(1)
    report = {"hardware": hardware(1), "loadavg_1m_at_start": os.getloadavg()[0], "rounds": rounds,
              "method": __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "datasets": {}}
    for d in (s.strip() for s in datasets.split(",") if s.strip()):
        report["datasets"][d] = epoch_cost(d, rounds)
        r = report["datasets"][d]["ratio"]
        click.echo(f"{d}: g2rec / items CPU per training epoch {r['train_epoch_cpu_s']:.2f}x, "
                   f"per validation {r['validate_cpu_s']:.2f}x, per epoch with validation {r['per_epoch_cpu_s']:.2f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"-> {out}")
