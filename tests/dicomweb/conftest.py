"""A private network namespace for the DICOMweb tests, and a real Orthanc inside it.

Orthanc 1.10 listens on every interface (it has no bind-address option), so these tests move pytest's own main
thread into a fresh network namespace that holds only ``lo`` (``unshare(CLONE_NEWNET)``, the system call behind
``unshare -n``), and back out at the end. A network namespace belongs to a thread, and whatever that thread starts
inherits it: Orthanc, the OHIF static server's thread, playwright's driver and its Chromium all live in the
namespace, and so do the sockets the tests open. pytest itself reports as usual: there is no inner pytest run.
Needs root (``make test`` runs as root), and ``ip`` from iproute2 to bring ``lo`` up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from amoslabel.dicom.orthanc import DICOMWEB_PLUGIN, OrthancProcess, write_config
from tests.conftest import OUTPUT, free_port

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def _netns_id() -> str:
    return os.readlink("/proc/thread-self/ns/net")


class NetNamespace:
    """The private namespace the current thread is in, with the way back to the one it came from."""

    def __init__(self, original_fd: int):
        self.original_fd = original_fd
        self.id = _netns_id()

    def outside(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a new thread moved back to the original namespace (to prove what it cannot reach)."""
        result: dict = {}

        def run() -> None:
            try:
                if _libc.setns(self.original_fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
                result["value"] = fn()
            except BaseException as error:  # handed to the caller's thread
                result["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]


@contextlib.contextmanager
def private_network() -> Iterator[NetNamespace]:
    """Move this thread into a new network namespace with only ``lo`` (up) for the ``with`` block."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("enter the private network from the main thread (pytest's)")
    ip = shutil.which("ip") or "/usr/sbin/ip"
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            pytest.fail(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}; these tests need root (make test)")
        try:
            # unshare leaves lo DOWN: without this even 127.0.0.1 is unreachable
            subprocess.run([ip, "link", "set", "lo", "up"], check=True, capture_output=True, text=True)
            yield NetNamespace(original)
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the original network namespace")
    finally:
        os.close(original)


@pytest.fixture(scope="package")
def netns() -> Iterator[NetNamespace]:
    """Every test of this package runs in one private network namespace (the fixture is package-wide)."""
    if not Path(DICOMWEB_PLUGIN).exists() or shutil.which("Orthanc") is None:
        pytest.fail("Orthanc or its DICOMweb plugin is missing: apt-get install -y orthanc orthanc-dicomweb iproute2")
    with private_network() as ns:
        yield ns


@pytest.fixture(scope="package")
def orthanc(netns, tmp_path_factory) -> Iterator[OrthancProcess]:
    """A real Orthanc with the DICOMweb plugin, empty at the start, inside the private namespace."""
    folder = tmp_path_factory.mktemp("orthanc")
    proc = OrthancProcess(write_config(folder, free_port()))
    try:
        started = time.time()
        proc.wait_ready()
        print(f"Orthanc ready in {time.time() - started:.1f}s on {proc.url} in {netns.id}")
        yield proc
    finally:
        proc.stop()
        if OUTPUT.exists():
            (OUTPUT / "dicomweb").mkdir(exist_ok=True)
            shutil.copy(proc.log_path, OUTPUT / "dicomweb" / "orthanc.log")


@pytest.fixture(scope="package")
def ohif_dist(netns) -> Path:
    """The prebuilt OHIF viewer, fetched by scripts/fetch-ohif.sh (a no-op once cached in .cache/ohif)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "fetch-ohif.sh"
    # npm needs the machine's real network: run the script from a thread moved back out of the namespace
    fetched = netns.outside(lambda: subprocess.run([str(script)], capture_output=True, text=True, timeout=600))
    if fetched.returncode != 0:
        pytest.fail(f"scripts/fetch-ohif.sh failed:\n{fetched.stderr[-3000:]}")
    return Path(fetched.stdout.strip().splitlines()[-1])


def series_label_on(grid, shared: Path):
    """The real label of the TotalSegmentator series on ``grid``, by physical position (its direction flips y)."""
    import SimpleITK as sitk

    label = sitk.ReadImage(str(shared / "dicom" / "ts_ct_series_label.nii.gz"))
    return sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
