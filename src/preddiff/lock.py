"""One run per output: a lock on each output name, and outputs checked before the work starts.

Two runs writing the same ``OUT/<name>_<model>`` at once would overwrite each other's
checkpoint and result, and both would say they wrote it. :func:`claim_outputs` takes an
exclusive :func:`fcntl.flock` lock on a hidden file ``OUT/.<name>_<model>.lock`` for every
output of a run (and writes the process id into it); a second run asking for a name that is
held is refused at once, with a message naming the process that holds it. The kernel drops the
lock when its process ends, however it ends (a crash or ``kill -9`` leaves a lock file that
the next run simply takes over). On platforms without :mod:`fcntl` (Windows) no lock is taken.

Before locking, the output folder is checked to be writable and no output path to be a
folder, so that a run that would fail at its end fails before it computes anything.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from .errors import PredDiffError
from .fileio import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputBusy(PredDiffError):
    """Another running process holds the lock on an output name."""


def check_writable(folder: Path, option: str = "--out") -> None:
    """Raise a :class:`PredDiffError` unless a file can be created in ``folder``."""
    folder = Path(folder)
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".preddiff-write-test-")
    except OSError as exc:
        raise PredDiffError(f"{option} {str(folder)!r} is not writable ({exc.strerror}); "
                            "nothing was computed: choose a folder you can write to") from None
    os.close(fd)
    os.unlink(name)


class OutputLock:
    """An exclusive lock on one output name (``folder/.<stem>.lock``).

    Parameters
    ----------
    stem : Path
        The output without its suffix, e.g. ``OUT/digit7_lenet``.
    """

    def __init__(self, stem: Path):
        self.stem = Path(stem)
        self.path = self.stem.with_name(f".{self.stem.name}.lock")
        self._fd = None

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise :class:`OutputBusy` naming the process that holds it."""
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                what = ("is a folder" if self.path.is_dir()
                        else f"cannot be opened ({exc.strerror})")
                raise PredDiffError(
                    f"{self.path}, the lock file of output {self.stem}.npz, {what}; nothing was "
                    "computed: remove it, or use another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusy(
                    f"{self.stem}.npz is being computed by another preddiff run ({holder}); "
                    "wait for it to finish, or use another --out") from None
            except OSError as exc:  # a file system without locks (some network mounts)
                os.close(fd)
                self.path.unlink(missing_ok=True)
                print(f"preddiff: warning: cannot lock {self.path} ({exc.strerror}): another "
                      "run into the same output would not be detected", file=sys.stderr)
                return self
            try:  # the holder may have removed the file between our open and flock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


class OutputClaim:
    """The locks of one run's outputs; :meth:`release` drops them all."""

    def __init__(self, locks):
        self.locks = list(locks)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    def __enter__(self) -> "OutputClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_outputs(folder: Path, stems, suffixes=(".npz", ".png", ".ckpt.npz")) -> OutputClaim:
    """Check that ``folder`` is writable and lock every output stem in it.

    Parameters
    ----------
    folder : Path
        The output folder (it must exist).
    stems : iterable of Path
        Outputs without suffix, e.g. ``folder/digit7_lenet``.
    suffixes : sequence of str
        The files written per stem; none may be an existing folder.

    Returns
    -------
    OutputClaim
        Release it (or use it as a context manager) when the run ends.

    Raises
    ------
    PredDiffError
        The folder is not writable or an output path is a folder.
    OutputBusy
        Another running process holds one of the names (nothing is locked then).
    """
    check_writable(folder)
    stems = [Path(s) for s in stems]
    for stem in stems:
        for suffix in suffixes:
            target = stem.with_name(stem.name + suffix)
            if target.is_dir():
                raise PredDiffError(f"output {str(target)!r} is a folder; remove it or use "
                                    "another --out")
    claim = OutputClaim([])
    try:
        for stem in stems:
            claim.locks.append(OutputLock(stem).acquire())
    except BaseException:
        claim.release()
        raise
    # the names are ours now: temporary files of them were left by a killed run
    for stem in stems:
        for suffix in suffixes:
            target = stem.with_name(stem.name + suffix)
            remove_stale_temporaries(target, suffixes=(".tmp", "." + suffix.rsplit(".", 1)[-1]))
    return claim
