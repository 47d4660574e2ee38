"""Random streams: one seed per run, one independent stream per window.

A run of prediction difference analysis (Algorithm 1) has one integer seed
(:func:`resolve_seed`). Window ``i`` of the image draws its samples from its own stream,
``default_rng(SeedSequence(entropy=seed, spawn_key=(i,)))`` (:func:`window_rng`), so a window's
samples depend only on the seed and ``i``: not on the batch it is evaluated in, the order of
the batches, the process or a resume in between.

:class:`WindowStreams` hands a sampler the streams of a range of windows. Building a
:class:`numpy.random.SeedSequence` costs a few microseconds of Python-level hashing per window,
as much as drawing a window's noise on a small network; so :class:`WindowStreams` computes the
seeding words of all its windows at once with NumPy (:func:`seed_words`, the hashing of
``SeedSequence`` over arrays) and seeds each window's PCG64 from them. The streams are the same
bit for bit: :func:`seed_words` reproduces ``SeedSequence.generate_state``, and each
:class:`WindowStreams` checks its first window against NumPy's own ``SeedSequence`` before it
uses them (and falls back to ``SeedSequence`` for good if they ever differ).
"""
from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.random.bit_generator import ISpawnableSeedSequence

from .errors import InvalidArgument

__all__ = ["resolve_seed", "window_rng", "WindowStreams", "seed_words"]

log = logging.getLogger(__name__)

# SeedSequence's hashing constants (O'Neill's seed_seq_fe, as numpy.random.SeedSequence)
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_MASK = 0xFFFFFFFF


def resolve_seed(rng) -> int:
    """One integer seed from ``rng``.

    Parameters
    ----------
    rng : int or numpy.random.Generator
        A non-negative integer is used as is; from a Generator one integer in
        ``[0, 2**63)`` is drawn (advancing it).

    Returns
    -------
    int
    """
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63))
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        if int(rng) < 0:
            raise InvalidArgument(f"rng seed must be a non-negative integer, got {rng!r}")
        return int(rng)
    raise InvalidArgument(
        f"rng must be a numpy.random.Generator or a non-negative integer seed, got {rng!r}")


def window_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of window ``index`` in a run with ``seed``.

    ``default_rng(SeedSequence(entropy=seed, spawn_key=(index,)))``: independent streams that
    depend only on ``(seed, index)``.
    """
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(int(index),)))


def _words(value: int) -> list[int]:
    """``value`` as 32-bit words, lowest first (``[0]`` for 0), as SeedSequence splits it."""
    words = [value & _MASK]
    value >>= 32
    while value:
        words.append(value & _MASK)
        value >>= 32
    return words


def _hashmix(values: np.ndarray, const: list) -> np.ndarray:
    """SeedSequence's ``hashmix`` over an array (``const`` is its running hash constant)."""
    values = values ^ np.uint32(const[0])
    const[0] = (const[0] * _MULT_A) & _MASK
    values = values * np.uint32(const[0])
    return values ^ (values >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return result ^ (result >> np.uint32(16))


def seed_words(seed: int, indices) -> np.ndarray:
    """The PCG64 seeding words of windows ``indices`` of a run with ``seed``.

    Row ``n`` equals ``SeedSequence(entropy=seed, spawn_key=(indices[n],)).generate_state(4,
    np.uint64)``: SeedSequence's entropy assembly, mixing and state generation, computed for
    all windows at once.

    Parameters
    ----------
    seed : int
        Non-negative.
    indices : array of int, shape (N,)
        Non-negative window indices.

    Returns
    -------
    ndarray of uint64, shape (N, 4)
    """
    indices = np.asarray(indices, dtype=object if len(indices) and max(indices) > _MASK
                         else np.int64).reshape(-1)
    out = np.empty((len(indices), 4), np.uint64)
    run = _words(int(seed))
    run += [0] * (_POOL - len(run))  # padded to the pool size: the spawn key follows
    if indices.dtype == np.int64:  # every index one 32-bit word (below 2**32)
        groups = {1: np.arange(len(indices))}
    else:  # an index of 2**32 or more: more than one word
        lengths = np.array([len(_words(int(i))) for i in indices])
        groups = {n: np.flatnonzero(lengths == n) for n in np.unique(lengths)}
    with np.errstate(over="ignore"):
        for length, rows in groups.items():
            entropy = np.empty((len(rows), len(run) + length), np.uint32)
            entropy[:, :len(run)] = run
            if length == 1:
                entropy[:, -1] = indices[rows]
            else:
                entropy[:, len(run):] = [_words(int(indices[r])) for r in rows]
            out[rows] = _generate(_mixed(entropy))
    return out


def _mixed(entropy: np.ndarray) -> np.ndarray:
    """SeedSequence's ``mix_entropy`` of rows of entropy words (N, L >= 4) -> pools (N, 4)."""
    const = [_INIT_A]
    pool = [_hashmix(entropy[:, i], const) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], _hashmix(pool[src], const))
    for src in range(_POOL, entropy.shape[1]):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], _hashmix(entropy[:, src], const))
    return np.stack(pool, axis=1)


def _generate(pool: np.ndarray) -> np.ndarray:
    """SeedSequence's ``generate_state(4, np.uint64)`` of pools (N, 4) -> (N, 4) uint64."""
    const = _INIT_B
    words = np.empty((len(pool), 8), np.uint32)
    for i in range(8):
        value = pool[:, i % _POOL] ^ np.uint32(const)
        const = (const * _MULT_B) & _MASK
        value = value * np.uint32(const)
        words[:, i] = value ^ (value >> np.uint32(16))
    # pairs of words, lower first, as one 64-bit word (endian-independent, as SeedSequence)
    return words[:, 0::2].astype(np.uint64) | (words[:, 1::2].astype(np.uint64) << np.uint64(32))


class _WindowSeed(ISpawnableSeedSequence):
    """The seed sequence of one window's PCG64: its :func:`seed_words` precomputed.

    Behaves as ``SeedSequence(entropy=seed, spawn_key=(index,))`` for PCG64's seeding; any
    other request (and :meth:`spawn`) goes to that SeedSequence itself."""

    __slots__ = ("entropy", "spawn_key", "_state", "_sequence")

    def __init__(self, seed: int, index: int, state: np.ndarray):
        self.entropy, self.spawn_key = seed, (index,)
        self._state = state
        self._sequence = None

    @property
    def pool_size(self) -> int:
        return _POOL

    def _real(self) -> np.random.SeedSequence:
        if self._sequence is None:
            self._sequence = np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key)
        return self._sequence

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words == 4 and np.dtype(dtype) == np.uint64:
            return self._state.copy()
        return self._real().generate_state(n_words, dtype)

    def spawn(self, n_children):
        return self._real().spawn(n_children)

    def __getattr__(self, name):  # the rest of SeedSequence's attributes (state, pool, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._real(), name)

    def __reduce__(self):  # pickles as it is, with every protocol
        return (_WindowSeed, (self.entropy, self.spawn_key[0], self._state))

    def __repr__(self) -> str:
        return f"SeedSequence(entropy={self.entropy!r}, spawn_key={self.spawn_key!r})"


_fast_seeding = True  # off for good if seed_words ever disagrees with NumPy's SeedSequence


class WindowStreams(Sequence):
    """The per-window streams of windows ``start … stop − 1``, created on first use.

    ``streams[n]`` is :func:`window_rng` ``(seed, start + n)`` (the same stream; its PCG64 is
    seeded from :func:`seed_words`, computed once for the whole range); the same object is
    returned each time it is indexed. Samplers that use no randomness create none.
    """

    def __init__(self, seed: int, start: int, stop: int):
        self.seed, self.start, self.stop = int(seed), int(start), int(stop)
        self._cache: dict[int, np.random.Generator] = {}
        self._words = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        n = int(n)
        if n < 0:
            n += len(self)
        if not 0 <= n < len(self):
            raise IndexError(n)
        rng = self._cache.get(n)
        if rng is None:
            rng = self._cache[n] = self._make(n)
        return rng

    def _make(self, n: int) -> np.random.Generator:
        if self._words is None and _fast_seeding:
            self._words = _range_words(self.seed, self.start, self.stop)
        if self._words is None:
            return window_rng(self.seed, self.start + n)
        seed = _WindowSeed(self.seed, self.start + n, self._words[n])
        return np.random.Generator(np.random.PCG64(seed))


#: Windows per block of cached seeding words (a run's batches share its blocks).
SEED_BLOCK = 1024


@functools.lru_cache(maxsize=16)
def _block_words(seed: int, block: int) -> np.ndarray | None:
    """:func:`seed_words` of windows ``block·SEED_BLOCK …`` (read-only), checked against
    NumPy's SeedSequence on the block's first window; None (and no fast seeding from then
    on) if they differ."""
    global _fast_seeding
    start = block * SEED_BLOCK
    words = seed_words(seed, range(start, start + SEED_BLOCK))
    check = np.random.SeedSequence(seed, spawn_key=(start,)).generate_state(4, np.uint64)
    if not np.array_equal(words[0], check):  # NumPy changed its hashing
        log.warning("NumPy's SeedSequence differs from preddiff's copy of its hashing; "
                    "seeding every window through SeedSequence")
        _fast_seeding = False
        return None
    words.flags.writeable = False
    return words


def _range_words(seed: int, start: int, stop: int) -> np.ndarray | None:
    """Seeding words of windows ``start … stop − 1`` from the cached blocks."""
    if stop <= start:
        return None
    first, last = start // SEED_BLOCK, (stop - 1) // SEED_BLOCK
    blocks = [_block_words(seed, b) for b in range(first, last + 1)]
    if any(b is None for b in blocks):
        return None
    words = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    offset = first * SEED_BLOCK
    return words[start - offset:stop - offset]
