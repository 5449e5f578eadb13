"""The new Next Sample strategies through the real server and the Slicer client class, on a server of their own with
the background scorer on (the score strategies read what it stores)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ServerProcess, running


@pytest.fixture(scope="module")
def server(shared, tmp_path_factory):
    """The demo's scans: two with a final label, three without (what Next Sample offers)."""
    from amoslabel.data.importer import import_source
    from amoslabel.server.first_start import DEMO_MANIFEST

    studies = tmp_path_factory.mktemp("strategies") / "studies"
    report = import_source(DEMO_MANIFEST, studies, link_images=True, progress=False)
    assert not report.skipped, report.summary()
    with running(ServerProcess(studies, tmp_path_factory.mktemp("strategies-server"), {"preset": "cpu-fast"})) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return server.client(tmp_path_factory.mktemp("strategies-client"))


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
