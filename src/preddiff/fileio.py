"""Atomic file writes: nothing half-written on failure.

Every file preddiff writes (results, checkpoints, figures, converted models, downloaded
weights' sidecars, benchmark and evaluation reports) goes through :func:`atomic_path`: the
content is written to a temporary file in the target's folder, which is then renamed over the
target with :func:`os.replace` (atomic on POSIX and Windows). A failure at any point leaves the
previous file, if any, untouched and no temporary file behind. The temporary file gets the mode
an ordinary new file would have (``0o666`` minus the umask) before the rename, since
:func:`tempfile.mkstemp` creates it private (``0o600``).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "default_file_mode"]


def default_file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path, *, suffix: str = ".tmp", fsync: bool = False):
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    Parameters
    ----------
    path : str or Path
        The file to (re)write; missing parent folders are created.
    suffix : str
        Suffix of the temporary file (e.g. ``".png"`` for writers that look at it).
    fsync : bool
        Flush the temporary file to disk before the rename (checkpoints: a crash of the machine
        then leaves either the old or the new file, never an empty one).

    Examples
    --------
    >>> with atomic_path("result.npz") as tmp, open(tmp, "wb") as fh:   # doctest: +SKIP
    ...     np.savez(fh, a=a)
    """
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
