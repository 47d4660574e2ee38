"""Resumable runs: atomic ``.npz`` writes and the checkpoint of prediction difference analysis.

A run of :func:`preddiff.prediction_difference` with ``checkpoint=PATH`` saves, every few
seconds, the per-window results computed so far. Every window's result depends only on the
arguments and the run's seed (the sampler draws from a per-window stream), so a run started
again with the same arguments continues after the last saved window and ends with exactly the
result an uninterrupted run would have given.

A checkpoint carries a *fingerprint* of everything the result depends on: a hash of the
input image, the window, stride, number of samples, blobs, probability blobs, Laplace ``N``,
the seed, the sampler's description (including a hash of its data or parameters), the
classifier's type and its clean outputs on the image (which identify the network's weights
without knowing how the classifier is implemented). Resuming with a checkpoint whose
fingerprint differs raises :class:`~preddiff.errors.CheckpointMismatch` naming the argument.
The batch size is not part of the fingerprint: results do not depend on it.

Files are written to a temporary file in the same directory and renamed over the target
(``os.replace``), so a run killed at any moment leaves either the previous or the new
checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointMismatch
from .fileio import atomic_path

__all__ = ["atomic_savez", "Checkpoint"]

FORMAT = 1

#: A save may take at most this fraction of the time between saves; with large results the
#: interval grows so that writing checkpoints never costs more than ~5 % of the run.
MAX_SAVE_FRACTION = 0.05


def atomic_savez(path, *, compress=False, **arrays) -> None:
    """``np.savez`` (``np.savez_compressed`` with ``compress``) to a temporary file next to
    ``path``, then rename it over ``path``.

    ``path`` is used exactly as given (no ``.npz`` is appended). A failure leaves any previous
    file untouched and no temporary file behind.
    """
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as handle:
        save(handle, **arrays)


def json_array(obj) -> np.ndarray:
    """A JSON document as a 0-d unicode array (stored in ``.npz`` files without pickle)."""
    return np.array(json.dumps(obj, sort_keys=True))


def _close(stored: np.ndarray, current: np.ndarray) -> bool:
    if stored.shape != current.shape:
        return False
    scale = float(np.max(np.abs(current))) if current.size else 0.0
    return bool(np.allclose(stored, current, rtol=1e-5, atol=1e-6 * max(scale, 1e-30)))


class Checkpoint:
    """The checkpoint file of one run.

    Parameters
    ----------
    path : str or Path
        The checkpoint file (an ``.npz`` archive; written as given, no suffix added).
    fingerprint : dict
        JSON-serialisable description of the run's arguments (see the module docstring).
    clean : dict of str to ndarray
        The classifier's outputs on the unperturbed image, compared on resume with a relative
        tolerance of 1e-5 (so a classifier that is not bit-deterministic can still resume).
    interval : float
        Seconds between saves, at least; when a save takes long (large results) the wait grows
        to keep saving under :data:`MAX_SAVE_FRACTION` of the time. 0 saves after every batch.
    """

    def __init__(self, path, fingerprint: dict, clean: dict, interval: float = 10.0):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # keeps the key order
        self.clean = clean
        self.interval = float(interval)
        self._next = time.monotonic() + self.interval
        self._saved_done = -1

    def load(self):
        """Progress saved in the file, or None when there is no file.

        Returns
        -------
        (done, values, timings) : (int, dict of str to ndarray (done, units), dict)
            None also when the file records no finished window: it is then ignored.

        Raises
        ------
        CheckpointMismatch
            The file cannot be read, or it was written by a run with other arguments.
        """
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                blobs = meta["fingerprint"]["blobs"]
                values = {b: data[f"values_{i}"] for i, b in enumerate(blobs)}
                clean = {b: data[f"clean_{i}"] for i, b in enumerate(blobs)}
            done = int(meta["done"])
        except Exception as exc:
            raise CheckpointMismatch(
                f"cannot read checkpoint {self.path} ({type(exc).__name__}: {exc}); "
                "delete it to start again") from None
        if done == 0:
            # No window was finished (the run failed or was stopped in its first batch, e.g.
            # on a bad argument): there is nothing to resume, whatever its arguments were, so
            # the file is not held against a run with other arguments. It is overwritten.
            return None
        self._check(meta, clean)
        self._check_contents(done, values, meta.get("timings", {}))
        return done, values, dict(meta.get("timings", {}))

    def _check_contents(self, done: int, values: dict, timings) -> None:
        """A file of this run whose contents do not fit together (a finished count beyond the
        windows, too few values, a damaged or hand-edited file) is refused like an unreadable
        one, before anything is resumed from it."""
        windows = self.fingerprint.get("n_windows")
        problem = None
        if done < 0 or (windows is not None and done > int(windows)):
            problem = f"it records {done} finished windows of {windows}"
        elif not isinstance(timings, dict) or not all(
                isinstance(v, (int, float)) for v in timings.values()):
            problem = "its timings are not numbers"
        for blob, array in values.items():
            if problem is not None:
                break
            clean = np.asarray(self.clean.get(blob, np.empty(0)))
            units = clean.shape[0] if clean.ndim else 1
            if array.shape != (done, units) or array.dtype.kind != "f":
                problem = (f"its values of blob {blob!r} have shape {array.shape} "
                           f"({array.dtype}), expected ({done}, {units}) floats for {done} "
                           "finished windows")
        if problem is not None:
            raise CheckpointMismatch(f"cannot read checkpoint {self.path}: {problem}; delete it "
                                     "to start again")

    def _check(self, meta: dict, clean: dict) -> None:
        stored = meta.get("fingerprint", {})
        if meta.get("format") != FORMAT:
            raise CheckpointMismatch(
                f"checkpoint {self.path} has format {meta.get('format')!r}, this version "
                f"writes {FORMAT}; delete it to start again")
        # in the order of the fingerprint: arguments first, derived values last
        for key in list(self.fingerprint) + [k for k in stored if k not in self.fingerprint]:
            old, new = stored.get(key), self.fingerprint.get(key)
            if old != new:
                if key == "x_sha1":
                    what = "the input image x differs (its sha1)"
                else:
                    what = f"{key}={old!r} there, {key}={new!r} in this run"
                raise CheckpointMismatch(
                    f"checkpoint {self.path} was made with other arguments: {what}; use the "
                    "same arguments to resume, or delete the checkpoint")
        for blob, current in self.clean.items():
            if blob not in clean or not _close(clean[blob], current):
                raise CheckpointMismatch(
                    f"checkpoint {self.path} was made with another classifier: its output "
                    f"{blob!r} on the input image differs; use the same classifier to resume, "
                    "or delete the checkpoint")

    def due(self) -> bool:
        """Whether the interval since the last save has passed."""
        return time.monotonic() >= self._next

    def save(self, done: int, values: dict, timings: dict) -> None:
        """Write the first ``done`` windows' values (atomically)."""
        if done == self._saved_done:
            return
        start = time.monotonic()
        blobs = self.fingerprint["blobs"]
        arrays = {"meta": json_array({"format": FORMAT, "fingerprint": self.fingerprint,
                                      "done": int(done), "timings": timings})}
        for i, blob in enumerate(blobs):
            arrays[f"values_{i}"] = values[blob][:done]
            arrays[f"clean_{i}"] = self.clean[blob]
        atomic_savez(self.path, **arrays)
        self._saved_done = done
        spent = time.monotonic() - start
        wait = max(self.interval, spent / MAX_SAVE_FRACTION) if self.interval > 0 else 0.0
        self._next = time.monotonic() + wait

    def remove(self) -> None:
        """Delete the checkpoint file (if there is one)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def finished_windows(path) -> int:
    """Windows a checkpoint file records as finished: 0 for a missing, unreadable or empty
    one (a run that failed in its first batch leaves one with nothing to resume)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(json.loads(str(data["meta"]))["done"])
    except Exception:  # noqa: BLE001 - unreadable: the run itself reports it
        return 0
