"""One small nnU-Net model for the whole test run, shared by the import tests and the fetch tests.

Training it (nnU-Net's planning, preprocessing and trainer, on synthetic cases) costs about 50 s of CPU; two modules
need the same model and only read it (an import copies it; a release zip is made from a copy). Under pytest-xdist the
modules may run on different workers at once, so the first to need it trains it under a file lock in the run's shared
temporary folder, and the other waits and takes the same folder: the documented xdist pattern for session data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock


@pytest.fixture(scope="session")
def nnunet_model(tmp_path_factory, worker_id) -> Path:
    """nnU-Net's planning command, then nnU-Net's own trainer for 10 iterations on synthetic cases (8 mm)."""
    from bench.nnunet_reference import train_reference

    # every worker's base temp sits in one folder of the run; without xdist, that folder is this run's own
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    work = shared / "nnunet-reference"
    with FileLock(str(shared / "nnunet-reference.lock")):
        done = work / "trained"
        if not done.is_file():
            result = train_reference(work, 1, 2, 8.0, 32, fold="all", max_stages=3, feature_divisor=4, iterations=10)
            done.write_text(str(result))
        result = Path(done.read_text())
    assert (result / "fold_all" / "checkpoint_final.pth").is_file()
    return result
