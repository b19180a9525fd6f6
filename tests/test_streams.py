"""Random streams: named, seeded by the run's own seed, and never shared by two names or seeds."""
import jax
import numpy as np
import pytest

from collapse_jax import streams


def test_numpy_streams_differ_by_name_seed_and_index_and_repeat_exactly():
    draw = lambda *a: streams.numpy_rng(*a).integers(2 ** 62, size=4).tolist()  # noqa: E731
    seen = {}
    for args in [(0, 'real_order'), (1, 'real_order'), (0, 'batches', 0, 7), (0, 'batches', 1, 7),
                 (0, 'candidates', 0), (0, 'selection', 0), (0, 'mirror', 0), (1, 'candidates', 0),
                 (0, 'candidates', 7)]:
        v = tuple(draw(*args))
        assert v not in seen, (args, seen.get(v))
        seen[v] = args
    assert draw(3, 'batches', 2, 5) == draw(3, 'batches', 2, 5)


def test_jax_streams_differ_by_name_and_seed():
    bits = lambda *a: np.asarray(jax.random.key_data(streams.jax_key(*a))).tolist()  # noqa: E731
    keys = [bits(0, 'train', 0), bits(0, 'sample', 0), bits(0, 'eval', 0), bits(1, 'train', 0),
            bits(0, 'train', 1)]
    assert len({str(k) for k in keys}) == len(keys)
    assert bits(0, 'sample', 0) != bits(1, 'train', 0)  # sampling is not the next seed's training


def test_unknown_stream_or_wrong_index_is_an_error():
    with pytest.raises(ValueError, match="random stream 'noise'; allowed: "):
        streams.numpy_rng(0, 'noise')
    with pytest.raises(ValueError, match="'batches' takes 2 indices"):
        streams.numpy_rng(0, 'batches', 1)
