"""`g2rec features ...`: apply the repo, publish profiles and prototypes, look features up, serve.

The store is chosen by the G2REC_* environment variables (features/config.py), overridable with
--root/--online/--redis on the group, e.g.

    g2rec features apply
    g2rec features publish --synthetic 100000 --rho 4 --clusters 256 --version 1
    g2rec features lookup --items 1,2,3 --users 7
    g2rec features serve --port 6566          # feast serve on 127.0.0.1:6566
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from .config import ONLINE_BACKENDS, StoreConfig


def _ids(text: str | None, name: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: expected comma-separated integer ids", param_hint=name) from e


def _repo(ctx: click.Context):
    from .store import FeatureRepo

    return FeatureRepo(ctx.obj)


@click.group()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding data/ (default: $G2REC_FEATURES_ROOT or the features/ folder).")
@click.option("--online", type=click.Choice(ONLINE_BACKENDS), default=None,
              help="Online store (default: $G2REC_FEAST_ONLINE or sqlite).")
@click.option("--redis", default=None, help="Redis host:port (default: $G2REC_REDIS or 127.0.0.1:6379).")
@click.pass_context
def features(ctx: click.Context, root: Path | None, online: str | None, redis: str | None) -> None:
    """The Feast feature store: versioned interest profiles, prototypes, recent histories."""
    ctx.obj = StoreConfig.from_env(root=root, online=online, redis=redis)


@features.command("config")
@click.pass_obj
def config_cmd(config: StoreConfig) -> None:
    """Print the resolved feature_store.yaml."""
    click.echo(config.to_yaml(), nl=False)


@features.command()
@click.pass_context
def apply(ctx: click.Context) -> None:
    """Register entities, sources, views and services; create online tables (`feast apply`)."""
    with _repo(ctx) as repo:
        repo.apply()
        names = sorted(v.name for v in repo.store.list_feature_views())
    click.echo(f"applied project {ctx.obj.project} ({ctx.obj.online}): {', '.join(names)}")


def _load_profiles(path: Path):
    from g2rec.errors import DataError
    from g2rec.types import InterestProfiles

    with np.load(path, allow_pickle=False) as z:
        missing = {"clusters", "weights", "item_ids", "n_clusters", "version"} - set(z.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)}", fix="publish the profiles.npz of a g2rec-mode run directory")
        return InterestProfiles(clusters=z["clusters"], weights=z["weights"], item_ids=z["item_ids"],
                                n_clusters=int(z["n_clusters"]), version=int(z["version"]))


@features.command()
@click.option("--from", "path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help=".npz with clusters, weights, item_ids, n_clusters, version (InterestProfiles fields).")
@click.option("--synthetic", type=int, default=None, help="Publish a random stand-in for this many items.")
@click.option("--rho", type=int, default=4, show_default=True)
@click.option("--clusters", "n_clusters", type=int, default=256, show_default=True)
@click.option("--version", type=int, default=None, help="Version (default: the current version + 1).")
@click.option("--offline/--no-offline", default=False, show_default=True,
              help="Also append the rows to the offline store.")
@click.pass_context
def publish(ctx: click.Context, path: Path | None, synthetic: int | None, rho: int, n_clusters: int,
            version: int | None, offline: bool) -> None:
    """Publish a profile version atomically (readers switch when it is complete)."""
    import dataclasses

    from .lookup import FeatureLookup
    from .publish import publish_profiles, stand_in_profiles

    if (path is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --from FILE or --synthetic N")
    with _repo(ctx) as repo:
        # Versions come from the store (current + 1) unless --version names one.
        if version is None:
            version = (FeatureLookup(repo).current_version() or 0) + 1
        if path is not None:
            profiles = dataclasses.replace(_load_profiles(path), version=version)
        else:
            profiles = stand_in_profiles(synthetic, rho, n_clusters, version)
        result = publish_profiles(repo, profiles, offline=offline)
    click.echo(json.dumps({**dataclasses.asdict(result), "rows_per_s": round(result.rows_per_s)}))


@features.command("publish-prototypes")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--version", type=int, required=True)
@click.option("--profile-version", type=int, required=True, help="Profile version the cluster ids belong to.")
@click.pass_context
def publish_prototypes_cmd(ctx: click.Context, path: Path, version: int, profile_version: int) -> None:
    """Publish cluster prototype vectors from a .npy (K, d) file."""
    import dataclasses

    from .publish import publish_prototypes

    vectors = np.load(path, allow_pickle=False)
    with _repo(ctx) as repo:
        result = publish_prototypes(repo, vectors, version, profile_version)
    click.echo(json.dumps(dataclasses.asdict(result)))


@features.command()
@click.option("--items", default=None, help="Comma-separated item ids: their profiles.")
@click.option("--users", default=None, help="Comma-separated user ids: their recent histories.")
@click.option("--clusters", default=None, help="Comma-separated cluster ids: their prototypes.")
@click.option("--version", type=int, default=None, help="Profile/prototype version (default: current).")
@click.pass_context
def lookup(ctx: click.Context, items: str | None, users: str | None, clusters: str | None,
           version: int | None) -> None:
    """Print features as JSON; missing entities are listed under "missing"."""
    from .lookup import FeatureLookup

    item_ids, user_ids, cluster_ids = _ids(items, "--items"), _ids(users, "--users"), _ids(clusters, "--clusters")
    if not (item_ids or user_ids or cluster_ids):
        raise click.UsageError("give --items, --users and/or --clusters")
    out: dict = {}
    with _repo(ctx) as repo:
        lk = FeatureLookup(repo)
        if item_ids:
            p = lk.profiles(item_ids, version)
            out["profiles"] = {
                "version": p.version, "missing": p.missing.tolist(),
                "items": {str(i): {"clusters": c.tolist(), "weights": [round(float(x), 6) for x in w],
                                   "primary_cluster": int(pc)}
                          for i, c, w, pc, f in zip(p.item_ids, p.clusters, p.weights, p.primary, p.found) if f},
            }
        if cluster_ids:
            q = lk.prototypes(cluster_ids, version)
            out["prototypes"] = {
                "version": q.version, "profile_version": q.profile_version, "missing": q.missing.tolist(),
                "clusters": {str(c): v.tolist() for c, v, f in zip(q.cluster_ids, q.vectors, q.found) if f},
            }
        if user_ids:
            h = lk.histories(user_ids)
            out["histories"] = {
                "missing": h.missing.tolist(),
                "users": {str(u): {"item_ids": i.tolist(), "timestamps": t.tolist()}
                          for u, i, t, f in zip(h.user_ids, h.items, h.times, h.found) if f},
            }
    click.echo(json.dumps(out))


@features.command()
@click.option("--feature-set", default=None, help="Only this feature set.")
@click.pass_context
def versions(ctx: click.Context, feature_set: str | None) -> None:
    """Print the version log (metadata DB) as JSON lines."""
    from .versions import VersionLog

    log = VersionLog(ctx.obj.metadata)
    for rec in log.history(feature_set):
        click.echo(json.dumps(rec, default=str))


@features.command()
@click.argument("feature_set")
@click.pass_context
def unlock(ctx: click.Context, feature_set: str) -> None:
    """Release a dead publisher's lock on FEATURE_SET (its version is marked failed)."""
    from .versions import VersionLog

    version = VersionLog(ctx.obj.metadata).unlock(feature_set)
    click.echo(f"{feature_set}: " + ("no lock held" if version is None else f"released version {version}"))


@features.command()
@click.option("--port", type=int, default=6566, show_default=True)
@click.pass_context
def serve(ctx: click.Context, port: int) -> None:
    """Run `feast serve` on 127.0.0.1:PORT for other services (foreground)."""
    from .serve import serve_command

    cmd = serve_command(ctx.obj, port)
    click.echo(f"serving {ctx.obj.project} ({ctx.obj.online}) on http://127.0.0.1:{port}", err=True)
    os.execv(cmd[0], cmd)
