"""The new Next Sample strategies through the real server and the Slicer client class."""

from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("strategy", ["foreground_random", "attention", "uncertainty", "attention_diversity", "clasp"])
def test_next_sample_returns_an_unlabelled_image(client, server, strategy):
    deadline = time.time() + 180  # the score strategies wait for the background scorer's first pass
    sample = client.next_sample(strategy, {})
    while not sample.get("id") and time.time() < deadline:
        time.sleep(3)
        sample = client.next_sample(strategy, {})
    assert sample.get("id"), server.tail()
    entry = client.datastore()["objects"][sample["id"]]
    assert "final" not in entry.get("labels", {}), entry  # only images without a final label are offered
