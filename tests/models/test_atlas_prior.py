"""The atlas prior's sources: the datastore's final labels as they are on disk, rebuilt when they change (no server).

The studies folders here are made in ``tmp_path`` from the real TotalSegmentator label of the sample CT in
``../shared/data`` (slabs of it: each a distinct label map, with organs inside its field of view); each scan is that
label's grid with label-made intensities. Finals are published as the review workflow publishes them: the consensus
label stored in the version store, then ``AmosDatastore.publish_final`` (a ``final`` link to the version file).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from amoslabel.config import load_config
from amoslabel.organs import NUM_CLASSES
from amoslabel.data.stores import open_datastore
from amoslabel.volume import read_label
from amoslabel.workspace import Workspace
import models.prior_task
from models.atlas_prior import Atlas
from models.prior_task import AtlasCache, PriorInferTask, final_labels
from review.store import VersionFiles

SLABS = {"case_a": (0, 112), "case_b": (3, 110), "case_c": (6, 106), "case_new": (9, 103)}


def prior_config(max_final_labels: int = 50):
    """The app's configuration with no label-only maps: the finals alone build the atlas (fast, and countable)."""
    config = load_config(overrides={"preset": "cpu-fast"})
    prior = config.prior.model_copy(update={"label_maps": [], "max_final_labels": max_final_labels})
    return config.model_copy(update={"prior": prior})


@pytest.fixture
def studies(tmp_path, shared):
    """A studies folder of four scans (no label yet) and the label each will get as its final."""
    base = read_label(shared / "ct" / "ts_abdomen_ct_label.nii.gz")
    folder = tmp_path / "studies"
    folder.mkdir()
    labels = {}
    for case, (lo, hi) in SLABS.items():
        label = base[:, :, lo:hi]
        image = sitk.Cast(label, sitk.sitkInt16) * 20 + 40
        sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))
        labels[case] = label
    return folder, labels


def publish_final(store, folder: Path, case: str, label: sitk.Image) -> Path:
    """What the review workflow does when a case reaches consensus: the label version, then the datastore's final."""
    stored = VersionFiles(Workspace(folder).label_versions).put(case, label)
    store.publish_final(case, stored.path, {"version": 1, "by": "consensus"})
    return stored.path


def built_count(caplog) -> int:
    """How many label maps the last 'atlas built from N label maps' log line counts."""
    lines = [re.search(r"atlas built from (\d+) label maps", r.message) for r in caplog.records]
    counts = [int(m.group(1)) for m in lines if m]
    assert counts, "no atlas was built"
    return counts[-1]


def test_a_final_published_by_another_server_joins_the_next_atlas(studies, tmp_path, caplog):
    """A team's leader publishes every final; a server's own datastore index does not list it until its restart. The
    prior reads the finals from the folder, so the next pre-label on any server uses an atlas that includes it."""
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)  # this server's
    for case in ("case_a", "case_b"):
        publish_final(store, folder, case, labels[case])
    cache = AtlasCache(config, lambda: store, tmp_path / "prior", wait_s=300)  # waits for a rebuild, however slow
    caplog.set_level(logging.INFO)
    assert sorted(cache.get().sources) == ["case_a", "case_b"]
    assert built_count(caplog) == 2

    leader = open_datastore(str(folder), config.storage)  # another server of the team (or a command) on the folder
    publish_final(leader, folder, "case_new", labels["case_new"])
    assert "case_new" not in store.get_labeled_images()  # this server's index does not know it...
    atlas = cache.get()
    assert sorted(atlas.sources) == ["case_a", "case_b", "case_new"]  # ...the atlas does
    assert built_count(caplog) == 3


def test_a_final_published_here_joins_the_next_atlas(studies, tmp_path, caplog):
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)
    publish_final(store, folder, "case_a", labels["case_a"])
    cache = AtlasCache(config, lambda: store, tmp_path / "prior", wait_s=300)
    caplog.set_level(logging.INFO)
    assert cache.get().sources == ["case_a"]
    publish_final(store, folder, "case_new", labels["case_new"])
    assert sorted(cache.get().sources) == ["case_a", "case_new"]
    assert built_count(caplog) == 2

    caplog.clear()  # a restart (a new cache on the same folder) loads that atlas: no build
    restarted = AtlasCache(config, lambda: store, tmp_path / "prior")
    assert sorted(restarted.get().sources) == ["case_a", "case_new"]
    assert not any("atlas built from" in r.message for r in caplog.records)


def test_the_newest_finals_are_those_published_last(studies, tmp_path):
    """``max_final_labels`` keeps the finals published last. A consensus that approves the submitted label unchanged
    publishes a version file stored days before (the version store keeps one file per content): its final is still
    new."""
    folder, labels = studies
    config = prior_config(max_final_labels=2)
    store = open_datastore(str(folder), config.storage)
    for case in ("case_a", "case_b"):
        publish_final(store, folder, case, labels[case])
    stored = VersionFiles(Workspace(folder).label_versions).put("case_new", labels["case_new"])  # submitted...
    week_ago = stored.path.stat().st_mtime - 7 * 86400
    os.utime(stored.path, (week_ago, week_ago))
    store.publish_final("case_new", stored.path, {"version": 1})  # ...and approved unchanged a week later
    cache = AtlasCache(config, lambda: store, tmp_path / "prior")
    assert [name for name, _ in cache.sources()] == ["case_new", "case_b"]
    stored.path.unlink()  # a final whose version file went: skipped, and the next newest takes its place
    assert [image_id for _, image_id, _ in final_labels(store, 2)] == ["case_b", "case_a"]


def atlas_of_one_final(studies, tmp_path, wait_s: float):
    """A datastore with the final ``case_a`` and its atlas, built: ``(folder, labels, store, cache, atlas)``."""
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)
    publish_final(store, folder, "case_a", labels["case_a"])
    cache = AtlasCache(config, lambda: store, tmp_path / "prior", wait_s=wait_s)
    return folder, labels, store, cache, cache.get()


def test_a_new_final_is_built_in_the_background_and_the_previous_atlas_answers_meanwhile(
    studies, tmp_path, caplog, monkeypatch
):
    """A rebuild that takes longer than a request waits: the request gets the previous atlas, named as such; once
    built, the new atlas answers. The review workflow's final listener (``refresh``) starts the build."""
    folder, labels, store, cache, first = atlas_of_one_final(studies, tmp_path, wait_s=0)
    assert cache.refresh() is False  # nothing changed: nothing to build

    gate = threading.Event()
    build = models.prior_task.build_atlas

    def slow_build(*args, **kwargs):
        assert gate.wait(120), "the test never let the build finish"
        return build(*args, **kwargs)

    monkeypatch.setattr(models.prior_task, "build_atlas", slow_build)
    caplog.set_level(logging.INFO)
    publish_final(store, folder, "case_new", labels["case_new"])
    assert cache.refresh() is True  # what the final listener does: the build starts now, in the background
    atlas, pending = cache.current()
    assert atlas is first and pending == ["case_new"]
    assert any("being rebuilt" in r.message and "case_new" in r.message for r in caplog.records)

    gate.set()
    assert cache.wait(120)
    atlas, pending = cache.current()
    assert sorted(atlas.sources) == ["case_a", "case_new"] and pending == []
    assert built_count(caplog) == 2


def test_the_periodic_check_rebuilds_without_a_request(studies, tmp_path):
    """``watch``: the check a server runs for finals another server of its team published."""
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)
    publish_final(store, folder, "case_a", labels["case_a"])
    cache = AtlasCache(config, lambda: store, tmp_path / "prior", wait_s=0)
    cache.get()
    cache.watch(interval_s=0.2)
    try:
        publish_final(open_datastore(str(folder), config.storage), folder, "case_new", labels["case_new"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and cache.current(wait_s=0)[1]:
            time.sleep(0.2)
        atlas, pending = cache.current(wait_s=0)
        assert sorted(atlas.sources) == ["case_a", "case_new"] and pending == []
    finally:
        cache.stop()


def test_finals_published_together_make_one_look_at_the_sources_not_one_each(studies, tmp_path, monkeypatch):
    """The final listener (``final_published``): with the watcher running, a burst of finals wakes it for one look
    (and one more for those published during that look and the pause after it), not one each; a final published
    later is looked at too. Without a watcher, each looks at once."""
    *_, cache, _ = atlas_of_one_final(studies, tmp_path, wait_s=0)
    looks = []
    monkeypatch.setattr(cache, "refresh", lambda: looks.append(time.monotonic()) or False)
    cache.final_published()
    assert len(looks) == 1  # no watcher: at once
    cache.watch(interval_s=600)  # the periodic check far away: only the finals wake it

    def looked(n: int) -> bool:
        deadline = time.monotonic() + 60
        while len(looks) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(looks) >= n

    try:
        for _ in range(20):
            cache.final_published()
        assert looked(2)
        time.sleep(3 * models.prior_task.GATHER_S)  # the pause, and the one more look it may end with
        burst = len(looks) - 1
        assert 1 <= burst <= 2, looks  # 20 finals: one or two looks
        cache.final_published()
        assert looked(1 + burst + 1)  # a final after the pause: looked at
    finally:
        cache.stop()


def test_a_final_the_atlas_cannot_place_is_named_in_the_log_and_the_atlas(studies, tmp_path, caplog):
    """A thin slab (every organ cut by its first or last slice) has nothing to place it by: it is left out, and the
    log and the atlas say which (the log's count is of the maps used)."""
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)
    publish_final(store, folder, "case_a", labels["case_a"])
    slab = labels["case_b"][:, :, 50:53]
    sitk.WriteImage(sitk.Cast(slab, sitk.sitkInt16) * 20 + 40, str(folder / "case_slab.nii.gz"))
    store.has_image("case_slab")  # added while running: taken into the index
    publish_final(store, folder, "case_slab", slab)
    caplog.set_level(logging.INFO)
    atlas = AtlasCache(config, lambda: store, tmp_path / "prior").get()
    assert atlas.sources == ["case_a"] and list(atlas.skipped) == ["case_slab"]
    assert "cut by its first or last slice" in atlas.skipped["case_slab"]
    assert built_count(caplog) == 1
    assert any(r.levelno == logging.WARNING and "case_slab" in r.message for r in caplog.records)
    assert any("1 left out (case_slab)" in r.message for r in caplog.records)


def test_the_prior_prelabel_names_the_label_maps_of_its_atlas(studies, tmp_path, shared, monkeypatch):
    """The infer result says which label maps the atlas was built from, which it left out and, while it is rebuilt,
    which finals it lacks."""
    folder, labels = studies
    config = prior_config()
    store = open_datastore(str(folder), config.storage)
    publish_final(store, folder, "case_a", labels["case_a"])
    cache = AtlasCache(config, lambda: store, tmp_path / "prior", wait_s=300)
    task = PriorInferTask(config, cache)
    request = {"image": str(shared / "ct" / "ts_abdomen_ct_small.nii.gz"), "modality": "ct"}
    _, result = task(dict(request))
    assert result["prior"]["atlas_sources"] == ["case_a"] and result["prior"]["atlas_skipped"] == {}
    assert "atlas_pending" not in result["prior"]

    publish_final(store, folder, "case_new", labels["case_new"])
    _, result = task(dict(request))  # the next pre-label after the final
    assert sorted(result["prior"]["atlas_sources"]) == ["case_a", "case_new"]
    assert result["model_version"] == cache.get().fingerprint

    gate = threading.Event()  # a rebuild longer than a request waits: the previous atlas answers, and says so
    build = models.prior_task.build_atlas
    monkeypatch.setattr(models.prior_task, "build_atlas", lambda *a, **k: gate.wait(120) and build(*a, **k))
    cache.wait_s = 0
    publish_final(store, folder, "case_c", labels["case_c"])
    _, result = task(dict(request))
    gate.set()
    assert sorted(result["prior"]["atlas_sources"]) == ["case_a", "case_new"]
    assert result["prior"]["atlas_pending"] == ["case_c"]
    assert cache.wait(120)


def test_a_failed_rebuild_keeps_the_previous_atlas_answering(studies, tmp_path, caplog, monkeypatch):
    folder, labels, store, cache, first = atlas_of_one_final(studies, tmp_path, wait_s=120)

    def broken(*args, **kwargs):
        raise ValueError("no label map has an organ inside its field of view")

    monkeypatch.setattr(models.prior_task, "build_atlas", broken)
    publish_final(store, folder, "case_new", labels["case_new"])
    atlas, pending = cache.current()
    assert atlas is first and pending == ["case_new"]
    assert any("could not be built" in r.message for r in caplog.records)
    assert cache.wait(120) and cache.refresh() is False  # not tried again at once (after RETRY_S, or a new change)


def test_sampling_a_grid_is_trilinear_interpolation_as_scipy_computes_it():
    """The separable sampling that the placement search and the labelling use, against ``map_coordinates`` at every
    point of the grid: inside, on the atlas's edges and outside (background 1, organs 0)."""
    rng = np.random.default_rng(7)
    probabilities = rng.integers(0, 256, (NUM_CLASSES, 9, 11, 13), dtype=np.uint8)
    atlas = Atlas(probabilities, (-40.0, -30.0, -20.0), (4.0, 5.0, 6.0))
    edges = [(-40.0, -40.0 + 4 * 12), (-30.0, -30.0 + 5 * 10), (-20.0, -20.0 + 6 * 8)]
    axes = [
        np.sort(np.concatenate([rng.uniform(lo - 15, hi + 15, n), [lo, hi]])) for (lo, hi), n in zip(edges, (7, 6, 5))
    ]
    z, y, x = np.meshgrid(*[(a - o) / s for a, o, s in zip(axes, atlas.origin, atlas.spacing)][::-1], indexing="ij")
    channels = [0, 6, 15]
    expected = np.stack(
        [
            ndimage.map_coordinates(
                probabilities[c].astype(np.float64), [z.ravel(), y.ravel(), x.ravel()], order=1, mode="constant",
                cval=255.0 if c == 0 else 0.0,
            )
            for c in channels
        ]
    ) / 255.0  # fmt: skip
    sampled = atlas.sample_grid(axes, channels)
    assert sampled.shape == expected.shape and np.abs(sampled - expected).max() < 1e-5
    outside = (z.ravel() < 0) | (x.ravel() > 12)
    assert outside.any() and (sampled[0, outside] == 1).all() and (sampled[1:, outside] == 0).all()
