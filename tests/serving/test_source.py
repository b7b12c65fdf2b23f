"""serving/source.py and serving/handle.py: model versions from run directories, swapped atomically."""

import os
import shutil

import numpy as np
import pytest

from g2rec.errors import DataError, NotFoundError
from serving.handle import ModelHandle, Watcher, WatchConfig
from serving.run_dir import MANIFEST, open_version, prepare_run, read_version
from serving.source import PointerSource, RunDirSource


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_run_retrained_in_place_is_re_exported_and_becomes_current(run_dir, other_run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    source = RunDirSource(run)
    before = source.current()
    assert source.current() is before  # nothing changed: no re-read
    shutil.copy(other_run_dir / "model.pt", run / "model.pt")  # the retrain
    after = source.current()
    assert after.model_sha256 != before.model_sha256 and after.version == read_version(other_run_dir).version
    assert after.version != before.version


def test_a_graph_that_does_not_match_the_manifest_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "model.topk.onnx").write_bytes((run / "model.topk.onnx").read_bytes() + b"\0")
    with pytest.raises(DataError, match="sha256 mismatch"):
        read_version(run)
    (run / MANIFEST).unlink()  # the documented fix: a missing manifest means export again
    prepare_run(run)
    assert read_version(run).version == read_version(run_dir).version


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_the_pointer_names_the_run_to_serve(run_dir, other_run_dir, tmp_path, kind):
    def point(target):
        tmp = tmp_path / "current.new"
        if kind == "symlink":
            os.symlink(target, tmp)
        else:
            tmp.write_text(str(target))
        os.replace(tmp, tmp_path / "current")

    source = PointerSource(tmp_path)
    with pytest.raises(NotFoundError, match="current"):
        source.current()
    point(run_dir)
    assert source.current().run_dir == run_dir.resolve()
    point(other_run_dir)
    assert source.current().version == read_version(other_run_dir).version


def test_the_watcher_swaps_to_a_warmed_new_version_and_keeps_the_old_on_failure(run_dir, other_run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    source = RunDirSource(run)
    served = source.current()
    handle = ModelHandle(open_version(served))
    old = handle.get()
    seen = []
    handle.on_swap(seen.append)
    watcher = Watcher(source, handle, served, WatchConfig(poll_s=0))
    assert not watcher.poll()
    (run / "model.pt").write_bytes(b"half a checkpoint")  # a retrain caught mid-write
    with pytest.raises(DataError, match="does not load"):
        watcher.poll()
    assert handle.get() is old
    shutil.copy(other_run_dir / "model.pt", run / "model.pt")
    assert watcher.poll() and handle.get() is not old and seen == [handle.get()]
    assert handle.get().version == read_version(other_run_dir).version
    history = [10, 20]
    assert old.recommend([history], 5)[0].items != handle.get().recommend([history], 5)[0].items


def test_fast_and_reference_recommendations_agree(recommender):
    rng = np.random.default_rng(0)
    hists = [rng.choice(np.arange(10, 610, 10), size=rng.integers(0, 30), replace=False).tolist() for _ in range(40)]
    hists[3] = [99999]  # fallback users
    excludes = [rng.choice(np.arange(10, 610, 10), size=3).tolist() for _ in hists]
    for k in (1, 10, 1000):
        fast = recommender.recommend(hists, k, excludes)
        ref = recommender.recommend_reference(hists, k, excludes)
        for f, r in zip(fast, ref):
            assert f.items == r.items and np.allclose(f.scores, r.scores, atol=1e-5)
            assert (f.used_items, f.unknown_items, f.fallback) == (r.used_items, r.unknown_items, r.fallback)
