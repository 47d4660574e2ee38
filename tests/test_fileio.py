"""Atomic writes: the previous file survives a failure, no temporary file is left behind."""
import os

import numpy as np
import pytest

from preddiff.fileio import atomic_path, atomic_write_bytes, atomic_write_text, default_file_mode


def test_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.npz"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, a=np.arange(3))
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]


def test_file_gets_an_ordinary_mode(tmp_path):
    target = atomic_write_bytes(tmp_path / "model.onnx", b"x")
    assert os.stat(target).st_mode & 0o777 == default_file_mode()


def test_suffix_and_fsync(tmp_path):
    seen = []
    with atomic_path(tmp_path / "fig.png", suffix=".png", fsync=True) as tmp:
        seen.append(tmp.suffix)
        tmp.write_bytes(b"png")
    assert seen == [".png"] and (tmp_path / "fig.png").read_bytes() == b"png"
