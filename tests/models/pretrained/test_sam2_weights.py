"""`models fetch sam2`: SAM2's checkpoint downloaded with MONAI's downloader from a loopback mirror (or carried in),
its size read from its weights, loaded whole into the ``sam2`` package's own model, and published as a version; each
bad file or failed download one message, with nothing registered.

No SAM2 weights can be downloaded here: the checkpoint is made with random weights (``made_sam2``, tests/conftest.py).
It checks the plumbing, not SAM2's quality.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from amoslabel.errors import Conflict, InputError
from models.pretrained.sam2_weights import SAM2_MODEL, config_of, fetch_sam2, serving
from models.versions import ModelStore
from tests.conftest import amoslabel_command

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


def test_the_release_and_size_are_read_from_the_weights(made_sam2):
    from models.pretrained.sam2_weights import build_predictor

    assert config_of(torch.load(made_sam2, weights_only=True)["model"]) == TINY
    sam2_small = build_predictor("configs/sam2/sam2_hiera_s.yaml", 256, None, "cpu").state_dict()  # SAM2, not 2.1
    assert config_of(sam2_small) == "configs/sam2/sam2_hiera_s.yaml"


def test_a_carried_in_checkpoint_is_checked_and_published(made_sam2, tmp_path):
    models = tmp_path / "models"
    with pytest.raises(Conflict, match="models fetch sam2"):
        serving(models)
    version = fetch_sam2(models, source=made_sam2, image_size=256, actor="admin")
    assert serving(models).number == version.number == 1
    meta = version.meta
    assert meta["sam2"] == {"config": TINY, "image_size": 256} and "imported" not in meta  # not a pre-labeler
    assert meta["fetched"]["carried_in"] == made_sam2.name and len(meta["fetched"]["sha256"]) == 64
    assert meta["fetched"]["licence"].startswith("Apache-2.0") and meta["fetched"]["by"] == "admin"
    weights = ModelStore(models, SAM2_MODEL).load_weights(version)
    assert config_of(weights) == TINY and torch.equal(
        weights["image_encoder.trunk.patch_embed.proj.weight"],
        torch.load(made_sam2, weights_only=True)["model"]["image_encoder.trunk.patch_embed.proj.weight"],
    )


class _Mirror(http.server.ThreadingHTTPServer):
    def __init__(self, root: Path):
        self.root = root
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(args[2].root), **kwargs)

    def log_message(self, *args):
        pass


def test_the_download_comes_through_monai_from_the_url_and_a_failed_one_says_what_to_do(made_sam2, tmp_path):
    mirror = _Mirror(made_sam2.parent)
    try:
        url = f"http://127.0.0.1:{mirror.server_address[1]}/{made_sam2.name}"
        version = fetch_sam2(tmp_path / "models", url=url, image_size=256)
        assert version.meta["fetched"]["url"] == url
        assert not list((tmp_path / "downloads").glob(".amoslabel-partial-*"))  # the download is not kept twice
        with pytest.raises(InputError, match="failed.*--from FILE.pt"):
            fetch_sam2(tmp_path / "other", url=f"http://127.0.0.1:{mirror.server_address[1]}/nothing.pt")
    finally:
        mirror.shutdown()
        mirror.server_close()
    assert not (tmp_path / "other" / SAM2_MODEL).exists() or not ModelStore(tmp_path / "other", SAM2_MODEL).numbers()


def test_each_bad_checkpoint_is_one_message_and_registers_nothing(made_sam2, tmp_path):
    models = tmp_path / "models"
    half = tmp_path / "half.pt"
    half.write_bytes(made_sam2.read_bytes()[: made_sam2.stat().st_size // 2])
    other = tmp_path / "other.pt"
    torch.save({"model": {"layer.weight": torch.zeros(3, 3)}}, other)
    not_weights = tmp_path / "notes.pt"
    torch.save({"model": {"note": "not a tensor"}}, not_weights)
    cut = tmp_path / "cut.pt"
    weights = torch.load(made_sam2, weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in weights.items() if not k.startswith("memory_encoder.")}}, cut)
    for source, words, size in [
        (half, "not a whole PyTorch checkpoint", 256),
        (other, "not a SAM2 checkpoint", 256),
        (not_weights, "no weights under 'model'", 256),
        (cut, "do not fit SAM2's", 256),
        (tmp_path / "nowhere.pt", "no such file", 256),
        (made_sam2, "multiple of 32", 250),
    ]:
        with pytest.raises(InputError, match=words):
            fetch_sam2(models, source=source, image_size=size)
    assert not ModelStore(models, SAM2_MODEL).numbers()


def test_the_command_fetches_it_as_an_admin_types_it(made_sam2, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    fetch = ("models", "fetch", "sam2", "--studies", studies)
    done = amoslabel_command(*fetch, "--from", made_sam2, "--image-size", "256")
    assert done.returncode == 0 and "fetched sam2:v1: sam2.1_hiera_t.yaml at 256 pixels" in done.stdout, done.stderr
    meta = json.loads((studies / ".amoslabel" / "models" / SAM2_MODEL / "v0001" / "meta.json").read_text())
    assert meta["sam2"]["image_size"] == 256
    bad = amoslabel_command(*fetch, "--from", tmp_path / "none.pt")
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
