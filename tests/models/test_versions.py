"""Model versions are numbered, immutable, complete or absent, and never overwritten."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from amoslabel.errors import Conflict, NotFound
from models.versions import ModelStore


def _weights(value: float):
    return {"w": torch.full((2, 2), value)}


def test_publish_numbers_versions_and_keeps_earlier_ones(tmp_path):
    store = ModelStore(tmp_path, "unet")
    with pytest.raises(Conflict, match="no trained version"):
        store.resolve(None)
    v1 = store.publish(_weights(1.0), {"parent_version": None})
    v2 = store.publish(_weights(2.0), {"parent_version": 1})
    assert (v1.number, v2.number) == (1, 2) and store.numbers() == [1, 2]
    assert store.resolve("latest").number == 2 and store.resolve("v1").number == 1 and store.resolve(1).number == 1
    assert torch.equal(store.load_weights(store.get(1))["w"], torch.ones(2, 2))
    assert json.loads((v2.path / "meta.json").read_text())["parent_version"] == 1
    with pytest.raises(NotFound):
        store.resolve(7)
    with pytest.raises(NotFound):
        store.resolve("../etc")


def test_half_published_versions_are_ignored_and_numbers_not_reused(tmp_path):
    store = ModelStore(tmp_path, "unet")
    store.publish(_weights(1.0), {})
    (store.root / ".staging-crashed").mkdir()  # a crash before the rename
    (store.root / "v0002").mkdir()  # a crash that left a folder without its files
    assert store.numbers() == [1]
    v = store.publish(_weights(3.0), {})
    assert v.number == 3 and store.numbers() == [1, 3]


def test_concurrent_publishers_get_distinct_numbers(tmp_path):
    store = ModelStore(tmp_path, "vnet")
    with ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(lambda i: store.publish(_weights(float(i)), {"i": i}).number, range(8)))
    assert sorted(numbers) == list(range(1, 9))
    for n in numbers:
        meta = store.get(n).meta
        assert torch.equal(store.load_weights(store.get(n))["w"], torch.full((2, 2), float(meta["i"])))
    assert not [p for p in os.listdir(store.root) if p.startswith(".staging")]
