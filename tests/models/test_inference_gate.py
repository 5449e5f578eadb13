"""Interactive inference first: a real pre-label holds the gate while it runs, and a real ignite training loop waits
for it between iterations (never longer than its cap; a stale marker from a dead process does not stop it)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from ignite.engine import Engine

from amoslabel.config import load_config
from models.inference_gate import InferenceGate, PauseForInference, should_pause
from models.infer_task import SegmentationInferTask
from models.networks import build_network
from models.versions import ModelStore


def _engine(log):
    return Engine(lambda engine, batch: log.append(time.monotonic()))


def test_a_prelabel_holds_the_gate_while_it_runs(shared, tmp_path):
    config = load_config(overrides={"preset": "cpu-fast"})
    task = SegmentationInferTask("unet", config, ModelStore(tmp_path / "models", "unet"))
    settings = config.active.networks["unet"]
    task.store.publish(build_network(settings.network, settings.params).state_dict(), {"parent_version": None})
    gate = InferenceGate(tmp_path / "models")  # what the training subprocess watches
    seen = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(gate.busy())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        label_file, result = task({"image": str(shared / "ct/ts_abdomen_ct_small.nii.gz"), "device": "cpu"})
    finally:
        done.set()
        watcher.join()
    assert os.path.exists(label_file)
    assert any(seen), "the gate was never held during inference"
    assert not gate.busy() and not list(gate.folder.iterdir()), "the marker outlived the request"


def test_training_waits_for_inference_between_iterations(tmp_path):
    gate = InferenceGate(tmp_path)
    log: list = []
    engine = _engine(log)
    pause = PauseForInference(gate, max_pause_s=30, poll_s=0.02)
    pause.attach(engine)
    with gate.held():
        runner = threading.Thread(target=engine.run, kwargs={"data": [0], "max_epochs": 3})
        started = time.monotonic()
        runner.start()
        time.sleep(0.6)
        assert log == [], "an iteration ran while inference held the gate"
    runner.join(timeout=10)
    assert len(log) == 3 and log[0] - started >= 0.5
    assert pause.pauses == 1 and pause.paused_s >= 0.5


def test_a_wait_is_capped_and_a_stale_marker_is_ignored(tmp_path):
    gate = InferenceGate(tmp_path, stale_s=60)
    gate.folder.mkdir(parents=True)
    stale = gate.folder / "12345-dead"
    stale.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert not gate.busy()

    log: list = []
    engine = _engine(log)
    pause = PauseForInference(gate, max_pause_s=0.2, poll_s=0.02)
    pause.attach(engine)
    with gate.held():  # held for the whole run: each iteration waits its cap, then goes on
        engine.run([0], max_epochs=2)
    assert len(log) == 2 and pause.pauses == 2 and pause.paused_s == pytest.approx(0.4, abs=0.3)


@pytest.mark.parametrize(
    "policy, device, pauses",
    [("auto", "cuda", True), ("auto", "cpu", False), ("always", "cpu", True), ("never", "cuda", False)],
)
def test_the_policy(policy, device, pauses):
    assert should_pause(policy, device) is pauses
