"""Data-parallel `g2rec train` under torchrun: one process per device, each training on its share
of the batches with gradients averaged (g2rec.train.train_epoch / data_parallel); rank 0 writes the
run directory.

    torchrun --nproc_per_node 2 -m training.ddp --dataset ml-100k --model g2rec --out runs/ddp [--device cuda]

The backend is NCCL when the device is CUDA (rank r on cuda:LOCAL_RANK), else gloo on the CPU.
Every rank clusters the same training graph with the same seed, so they hold the same profiles.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import click
import torch
import torch.distributed as dist

from g2rec.cluster import pick_device
from training.cli import _config, with_train_options
from training.pipeline import run


@click.command()
@with_train_options
def main(dataset, dataset_path, fmt, model, out, config, epochs, seed, minutes, device):
    cfg = _config(dataset, dataset_path, fmt, model, config, epochs, seed, minutes, device)
    cuda = pick_device(cfg.train.device).type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
        dev = f"cuda:{local}"
        cfg = replace(cfg, train=replace(cfg.train, device=dev), cluster=replace(cfg.cluster, device=dev))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank = dist.get_rank()
        cfg = replace(cfg, train=replace(cfg.train, progress=cfg.train.progress and rank == 0))
        res = run(cfg, Path(out) if rank == 0 else None)
        if rank == 0:
            click.echo(f"{dist.get_world_size()} processes: best epoch {res.metrics['best_epoch']}, "
                       f"test NDCG@10 {res.metrics['test']['masked']['ndcg@10']:.4f} -> {out}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
