"""Files that are either complete or absent: atomic writes and copies, fsync, and the one SHA-256 of a file.

Every file this project keeps (labels, versions, records, indexes, model weights) is written through here, so that a
crash leaves the old file or the new one, never half of one, and every content hash is computed the same way.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from amoslabel.errors import StorageFull

FULL = "the server's storage is full: nothing was saved (an admin must free space; the server keeps serving reads)"


@contextmanager
def atomic_destination(
    dest: str | os.PathLike,
    scratch_dir: str | os.PathLike | None,
    suffix: str = "",
) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``dest``, else removed.

    ``scratch_dir`` must be on the same filesystem as ``dest``; keep it outside folders that other processes scan
    for images (MONAI Label's datastore would pick up a half-written ``*.nii.gz``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(scratch_dir) if scratch_dir else dest.parent
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f".tmp-{uuid.uuid4().hex}{suffix}"
    try:
        with full_disk_refused():
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def full_disk_refused() -> Iterator[None]:
    """A write that finds its disk full (or over quota) is :class:`StorageFull` (507), not an error 500."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(FULL) from error
        raise


def check_complete(path: str | os.PathLike, data_bytes: int = 0) -> None:
    """Raise OSError ENOSPC unless a file that ITK just wrote is whole.

    ITK's NIfTI writer does not fail on a full disk (or over quota): it prints "wrote only 0 of N bytes" and leaves a
    truncated file. A gzip file is read to its end (its CRC and length are checked; about 10 ms per MB); an
    uncompressed one must hold at least its ``data_bytes`` of voxels after its header.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 22):
                    pass
        elif path.stat().st_size < data_bytes:
            raise EOFError(f"{path.stat().st_size} bytes, fewer than its {data_bytes} bytes of voxels")
    except (EOFError, gzip.BadGzipFile, zlib.error) as cut:
        raise OSError(errno.ENOSPC, f"{path.name} was cut short while being written: {cut}") from cut


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike, scratch_dir: str | os.PathLike | None = None) -> Path:
    """Copy a file so that ``dest`` is either absent or complete."""
    with atomic_destination(dest, scratch_dir) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def write_text_atomic(text: str, dest: str | os.PathLike) -> Path:
    """Write a small text file (JSON metadata) atomically, its temporary file beside it."""
    with atomic_destination(dest, None, ".tmp") as tmp:
        tmp.write_text(text)
    return Path(dest)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_entry(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move a file, or a symbolic link as a link (never what it points to). A relative link is re-pointed from its
    new place, so it still reaches the same file."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink() and not os.path.isabs(os.readlink(src)):
        target = (src.parent / os.readlink(src)).resolve()
        os.symlink(os.path.relpath(target, dest.parent.resolve()), dest)
        src.unlink()
    else:
        os.replace(src, dest)  # a file, or an absolute link (which moves as it is)
    return dest


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (hex), read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
