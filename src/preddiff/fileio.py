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

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "default_file_mode",
           "remove_stale_temporaries", "saved_file"]

#: The random part :func:`tempfile.mkstemp` puts in a name (8 of these characters).
_TEMP_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


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
    if path.is_dir():
        raise _with_errno(IsADirectoryError(f"cannot write {path}: it is a folder"), 21)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # "[Errno 28] No space left on device" alone does not say which file; the temporary
        # file's name means nothing to the user
        raise _naming(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an error of writing ``path`` (the target, not a temporary file)."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return _with_errno(type(exc)(f"cannot write {path}: {reason}"), exc.errno)


def _with_errno(exc: OSError, errno) -> OSError:
    exc.errno = errno  # kept for callers; the message stays the plain sentence
    return exc


def remove_stale_temporaries(path, suffixes=(".tmp",)) -> list:
    """Delete the temporary files that :func:`atomic_path` made for ``path`` and that a
    killed process (``kill -9``, a power cut) left behind: ``.NAME.XXXXXXXX<suffix>``.

    Call it only while no other process can be writing ``path`` (e.g. holding its
    :class:`preddiff.lock.OutputLock`). Returns the paths removed.
    """
    path = Path(os.fspath(path))
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix):
            continue
        for suffix in suffixes:
            middle = name[len(prefix):len(name) - len(suffix)]
            if name.endswith(suffix) and len(middle) == 8 and set(middle) <= _TEMP_CHARACTERS:
                try:
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
                except OSError:
                    pass
                break
    return removed


def saved_file(path, what: str) -> Path:
    """``path`` as a Path, after checking that it names an existing regular file to read.

    Raises
    ------
    InvalidArgument
        No such file, or a folder (the message names ``what`` was expected).
    """
    from .errors import InvalidArgument

    path = Path(os.fspath(path))
    if path.is_dir():
        raise InvalidArgument(f"{path} is a folder, not a saved {what}")
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file (expected a saved {what})")
    return path


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
