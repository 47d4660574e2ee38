"""Per-window random streams: the fast seeding reproduces NumPy's SeedSequence exactly."""
import copy
import logging
import pickle

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import preddiff.streams as streams
from preddiff.streams import WindowStreams, seed_words, window_rng
from preddiff.windows import window_views

SEEDS = [0, 1, 7, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1, 2**64 + 3, 2**130 + 17]


@pytest.mark.parametrize("seed", SEEDS + [int(v) for v in
                                          np.random.default_rng(0).integers(0, 2**63, 8)])
def test_seed_words_equal_seedsequence(seed):
    indices = [0, 1, 2, 5, 1023, 1024, 2**31, 2**32 - 1, 2**32, 2**33 + 7, 2**70]
    words = seed_words(seed, indices)
    assert words.dtype == np.uint64 and words.shape == (len(indices), 4)
    for row, index in zip(words, indices):
        want = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(4, np.uint64)
        np.testing.assert_array_equal(row, want)


@pytest.mark.parametrize("start,stop", [(0, 5), (3, 400), (1000, 1100), (2040, 2050),
                                        (0, 2 * streams.SEED_BLOCK + 3)])
def test_window_streams_are_window_rng(start, stop):
    for seed in (0, 9, 2**63 - 1):
        s = WindowStreams(seed, start, stop)
        for n in sorted({0, 1, stop - start - 1, (stop - start) // 2}):
            assert s[n] is s[n]
            np.testing.assert_array_equal(s[n].standard_normal(9),
                                          window_rng(seed, start + n).standard_normal(9))
        fresh = WindowStreams(seed, start, stop)
        for n in (0, stop - start - 1):
            np.testing.assert_array_equal(fresh[n].integers(0, 2**62, 5),
                                          window_rng(seed, start + n).integers(0, 2**62, 5))


def test_window_stream_seed_sequence_spawns_as_seedsequence():
    rng = WindowStreams(5, 10, 20)[3]
    child = rng.spawn(2)[1]
    want = window_rng(5, 13).spawn(2)[1]
    np.testing.assert_array_equal(child.random(4), want.random(4))
    seq = rng.bit_generator.seed_seq
    assert (seq.entropy, seq.spawn_key, seq.pool_size) == (5, (13,), 4)
    np.testing.assert_array_equal(seq.generate_state(3),
                                  np.random.SeedSequence(5, spawn_key=(13,)).generate_state(3))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_window_streams_pickle_and_copy(protocol):
    rng = WindowStreams(5, 10, 20)[3]
    rng.random(2)
    want = window_rng(5, 13)
    want.random(2)
    expected = want.random(4)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(rng, protocol)).random(4), expected)
    np.testing.assert_array_equal(copy.deepcopy(rng).random(4), expected)
    assert rng.bit_generator.seed_seq.state == window_rng(5, 13).bit_generator.seed_seq.state


def test_streams_are_still_importable_from_samplers():
    from preddiff import samplers

    assert samplers.window_rng is window_rng and samplers.WindowStreams is WindowStreams
    with pytest.raises(AttributeError):
        samplers.no_such_name


def test_window_streams_fall_back_when_the_hashing_differs(monkeypatch, caplog):
    """Should NumPy ever change SeedSequence, the streams stay NumPy's (one warning)."""
    streams._block_words.cache_clear()
    monkeypatch.setattr(streams, "_fast_seeding", True)
    monkeypatch.setattr(streams, "seed_words",
                        lambda seed, idx: np.zeros((len(idx), 4), np.uint64))
    with caplog.at_level(logging.WARNING, logger="preddiff.streams"):
        s = WindowStreams(3, 0, 4)
        np.testing.assert_array_equal(s[2].random(3), window_rng(3, 2).random(3))
    assert "SeedSequence differs" in caplog.text
    assert streams._fast_seeding is False
    streams._block_words.cache_clear()


@pytest.mark.parametrize("shape,window", [((5, 7), (2, 3)), ((2, 3, 9, 8), (4, 4)),
                                          ((1, 6, 6), (6, 6))])
def test_window_views_equal_sliding_window_view(shape, window):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    want = sliding_window_view(a, window, axis=(-2, -1))
    got = window_views(a, window)
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable and np.shares_memory(got, a)
    t = np.asfortranarray(a)  # not C-contiguous: NumPy's own view
    np.testing.assert_array_equal(window_views(t, window), want)
    w = window_views(a, window, writeable=True)
    r, c = min(1, shape[-2] - window[0]), min(1, shape[-1] - window[1])
    w[(0,) * (a.ndim - 2) + (r, c)] = -1
    assert (a[(0,) * (a.ndim - 2)][r:r + window[0], c:c + window[1]] == -1).all()

