"""Python processes of the test suite started by fork from a Python that has imported torch and MONAI already.

Every MONAI Label server and every ``python -m amoslabel`` command the tests start imports torch and MONAI, and MONAI
imports all of its submodules and, through them, ignite, mlflow, matplotlib, pandas and scikit-learn: about 5 s of
CPU before the process does anything, some 80 times in a run on a 2-core machine. A forkserver (Python's
:mod:`multiprocessing`) imports them once; each process is a fork of it that then runs exactly the
``python -m module args...`` command line it was given (:func:`runpy.run_module`), with its own environment, working
folder and output files. What runs is the real server or command, from its entry point on; only the imports of those
libraries are shared, as gunicorn's ``--preload`` shares them between its workers.

Modules that read the environment as they are imported (MONAI Label's settings, this project's packages) are not
preloaded: each process imports them after its environment is set. glibc reads the malloc tuning only as a process
starts, so the forkserver starts with :data:`amoslabel.server.launch.MALLOC_TUNING`, as every server did.
Commands whose process group a test signals, or that a test runs as a user would from a shell (``serve``,
``serve-team``, ``train`` through torchrun), keep a process of their own.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from multiprocessing import forkserver
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

# Imported once by the forkserver: third-party libraries whose import reads nothing of the environment that a test
# sets for one process.
PRELOAD = ("torch", "monai", "SimpleITK", "nibabel", "scipy.ndimage", "sqlalchemy", "fastapi", "uvicorn", "argon2")

_lock = threading.Lock()
_context: Optional[multiprocessing.context.BaseContext] = None


def _network_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


# The network namespace the test process started in; the forkserver is started only from there (its forks run there).
_HOME_NETWORK = _network_namespace()


def _forkserver_context() -> multiprocessing.context.BaseContext:
    """The forkserver context, its server started (once per test process) with the malloc tuning in its
    environment."""
    global _context
    with _lock:
        if _context is None:
            from amoslabel.server.launch import MALLOC_TUNING

            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(PRELOAD))
            saved = {name: os.environ.get(name) for name in MALLOC_TUNING}
            os.environ.update(MALLOC_TUNING)
            try:
                forkserver.ensure_running()
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
            _context = context
        return _context


def _run_module(argv: Sequence[str], env: Dict[str, str], cwd: str, stdout_path: str, stderr_path: str) -> None:
    """In the fork: stdout and stderr to their files (unbuffered, as ``PYTHONUNBUFFERED`` made them), the environment
    and the working folder of the command, then ``python -m module args...`` as Python itself would run it."""
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # the forkserver ignores SIGINT (its own choice); a server stopped with Ctrl-C or SIGINT must see it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    module = argv[2]
    sys.argv = [module, *argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class PreloadedProcess:
    """The part of :class:`subprocess.Popen` that :class:`amoslabel.processes.LoggedProcess` and the tests use, for
    a ``python -m module ...`` command run in a fork of the preloaded forkserver."""

    def __init__(
        self, command: Sequence[str], log_path: Path, env: Dict[str, str], cwd: Path, stderr_path: Optional[Path] = None
    ):
        """Run ``command`` with stdout in ``log_path``, and stderr there too unless ``stderr_path`` is given."""
        if len(command) < 3 or command[0] != sys.executable or command[1] != "-m":
            raise ValueError(f"not a `python -m module` command line of this Python: {command}")
        self.args = list(command)
        self._process = _forkserver_context().Process(
            target=_run_module,
            args=(self.args, dict(env), str(cwd), str(log_path), str(stderr_path or log_path)),
            daemon=False,
        )
        self._process.start()
        # multiprocessing joins its children as the test process exits; a server a failed test left running must not
        # hold the run open (a subprocess is not waited for either)
        multiprocessing.process._children.discard(self._process)
        self.pid = self._process.pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # it ended (the forkserver reaped it) before its exit status reached this process

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_module(
    command: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None, timeout: Optional[float] = None
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`` for a
    ``python -m module ...`` command, run in a fork of the preloaded forkserver."""
    with tempfile.TemporaryDirectory(prefix="preloaded-") as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        process = start_module(command, stdout, dict(os.environ if env is None else env), cwd, stderr)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(list(command), code, stdout.read_text(), stderr.read_text())


def start_module(
    command: Sequence[str], log_path: Path, env: Dict[str, str], cwd: Path, stderr_path: Optional[Path] = None
) -> Union[PreloadedProcess, subprocess.Popen]:
    """A :class:`PreloadedProcess`; a plain :class:`subprocess.Popen` where the calling thread is in another network
    namespace than the forkserver (tests/dicomweb run in a private one): a fork would not see that network."""
    if _network_namespace() != _HOME_NETWORK:
        with open(log_path, "a") as out, open(stderr_path or log_path, "a") as err:
            return subprocess.Popen(list(command), stdout=out, stderr=err, env=env, cwd=cwd)
    return PreloadedProcess(command, log_path, env, cwd, stderr_path)
