"""What the `g2rec` entry point reads once (flags and environment) and every command below it
uses: kept in click's ctx.meta, shared by all contexts of one invocation."""

from __future__ import annotations

import os

import click

DEBUG_KEY = "g2rec.debug"
DATA_ROOT_KEY = "g2rec.data_root"


def debug_enabled(ctx: click.Context) -> bool:
    """--debug on `g2rec`, or G2REC_DEBUG set to anything but 0."""
    return bool(ctx.meta.get(DEBUG_KEY)) or os.environ.get("G2REC_DEBUG", "") not in ("", "0")


def data_root() -> str | None:
    """The data root named by `g2rec --data-root` or $G2REC_DATA; None: g2rec.data's default search."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(DATA_ROOT_KEY) if ctx is not None else os.environ.get("G2REC_DATA")
